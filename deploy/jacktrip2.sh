#!/usr/bin/env bash
# Installs jacktrip 2.x from Debian 13 (trixie) into a folder of its own, to run on Debian 12
# beside its jacktrip 1.7 without touching the system: the folder holds jacktrip with the C
# library, Qt and libjack it was built against, and DIR/jacktrip starts it through their loader.
# Packages come from Debian's archive, checked against the system's Debian keyring.
#   deploy/jacktrip2.sh DIR          then: tutti node --jacktrip DIR/jacktrip ...
set -euo pipefail
dir=$(realpath -m "${1:?usage: deploy/jacktrip2.sh DIR}")
suite=${JACKTRIP2_SUITE:-trixie}

if [ -x "$dir/jacktrip" ] && "$dir/jacktrip" -v 2>/dev/null | grep -q 'VERSION: 2\.'; then
    exit 0
fi
echo "installing jacktrip 2.x from Debian $suite into $dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/preferences.d"
touch "$work/status"  # nothing installed: apt fetches every library jacktrip needs
echo "deb http://deb.debian.org/debian $suite main" >"$work/sources.list"
apt=(
    -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o "Dir::Etc::PreferencesParts=$work/preferences.d" -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache" -o "Dir::State::status=$work/status"
    -o APT::Install-Recommends=false -o APT::Sandbox::User=root
)
apt-get "${apt[@]}" -qq update
apt-get "${apt[@]}" -qq -y --download-only install jacktrip >/dev/null

rm -rf "$dir"
mkdir -p "$dir/root"
for deb in "$work"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
loader=$(cd "$dir/root" && ls usr/lib/*/ld-linux*.so.* | head -1)
lib=$(dirname "$loader")
cat >"$dir/jacktrip" <<EOF
#!/bin/sh
# jacktrip 2.x from Debian $suite, with its own libraries (deploy/jacktrip2.sh)
here=\$(dirname "\$(readlink -f "\$0")")/root
exec "\$here/$loader" --library-path "\$here/$lib:\$here/$lib/libproxy" "\$here/usr/bin/jacktrip-cli" "\$@"
EOF
chmod +x "$dir/jacktrip"
"$dir/jacktrip" -v | grep VERSION

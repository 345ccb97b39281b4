// The conductor's score in this sclang. The node agent (tutti node) on this machine drives the
// Ableton Link session from the conductor, and tells sclang over OSC where the score is:
// /tutti/score, /tutti/transport, /tutti/param (see conductor/node/face.py). Tutti.clock is a
// LinkClock in that session, its bar lines the score's; Tutti.play starts a pattern on the next
// bar, stops it when the conductor pauses and starts it again on the next bar when it plays.

Tutti {
	classvar <clock, <bpm = 60, <beatsPerBar = 4, <lead = 0.2, <tempo = 60, <playing = false;
	classvar <sections, <params, <heard = false;
	classvar <>onBar, <>onSection, <>onPlay, <>onPause;
	classvar offset = 0, standing = 0, target = false, players, paramActions, lastSection, responders;
	classvar latest = 0; // the transport message being agreed with: an older one stops looking

	*start { |latency|
		if(clock.notNil) { ^clock };
		lead = latency ? Server.default.latency;
		sections = [];
		params = IdentityDictionary.new;
		paramActions = IdentityDictionary.new;
		players = List.new;
		clock = LinkClock.new(bpm / 60).latency_(lead).permanent_(true);
		clock.quantum = beatsPerBar;
		clock.setMeterAtBeat(beatsPerBar, 0);
		clock.schedAbs(clock.nextBar, { this.prBar; beatsPerBar });
		responders = [
			OSCFunc({ |msg| this.prScore(msg) }, '/tutti/score').permanent_(true),
			OSCFunc({ |msg, time| this.prTransport(msg, time) }, '/tutti/transport').permanent_(true),
			OSCFunc({ |msg| this.prParam(msg[1].asSymbol, msg[2]) }, '/tutti/param').permanent_(true)
		];
		^clock
	}

	*stop {
		responders.do(_.free);
		players.do(_.stop);
		clock !? { clock.permanent_(false).stop };
		clock = nil;
		heard = false;
	}

	// A pattern (or anything with .play(clock, quant:)) on Tutti's clock: it starts on the next
	// bar while the score plays, stops when it pauses, and starts on the next bar again.
	*play { |pattern|
		var player = pattern.asEventStreamPlayer;
		this.start;
		players.add(player);
		if(playing) { player.play(clock, false, Quant(beatsPerBar)) };
		^player
	}

	*remove { |player| player.stop; players.remove(player) }

	// Where the score is (for an event being prepared now: the clock runs its latency early).
	*beat { ^if(playing) { clock.beats + offset } { standing } }
	*position { ^this.beat * 60 / bpm }
	*bar { ^(this.beat / beatsPerBar).floor.asInteger + 1 }
	*beatInBar { ^(this.beat % beatsPerBar) + 1 }
	*section {
		var here = this.beat + 1e-6;
		var current = sections.select { |s| s[1] <= here }.last;
		^current !? { current[0] }
	}
	*param { |name| ^params[name.asSymbol] }
	*onParam { |name, function| paramActions[name.asSymbol] = function }

	// PRIVATE
	*prScore { |msg|
		var meter = msg[2].asInteger;
		bpm = msg[1];
		sections = msg[4..].clump(2).collect { |s| [s[0].asSymbol, s[1]] };
		if(msg[3] != lead) {
			lead = msg[3];
			clock.latency = lead;
			Server.default.latency = lead;
			this.prWake;
		};
		if(meter != beatsPerBar) {
			beatsPerBar = meter;
			clock.quantum = meter;
			clock.setMeterAtBeat(meter, 0);
		};
	}

	*prTransport { |msg, time|
		latest = latest + 1;
		this.prAgree(msg, time, latest, 0);
	}

	// The node commits a new line to Link, then tells sclang; Link's own message may come second
	// (on a busy machine, hundreds of milliseconds later). Until the clock's phase agrees with the
	// line, look again every few milliseconds, for up to two seconds: a pattern started on the old
	// phase would be off the score's beats. The line's beat is for the time of the bundle's
	// timetag (the node's clock when it sent it): a message sclang reads late is still read right.
	*prAgree { |msg, sent, which, tries|
		var now = Main.elapsedTime;
		var line = msg[3] + ((now - sent) * msg[2] / 60);
		var apart = line - clock.secs2beats(now);
		var agreed = (apart - apart.round(beatsPerBar)).abs <= 0.01;
		if(which != latest) { ^this }; // a newer message came: it is followed instead
		if(agreed.not and: { tries < 400 }) {
			SystemClock.sched(0.005, { clock !? { this.prAgree(msg, sent, which, tries + 1) }; nil });
		} {
			if(agreed.not) { "Tutti: Link's clock has not taken the conductor's line; is tutti node running?".warn };
			this.prFollow(msg[1] != 0, msg[2], apart.round(beatsPerBar), msg[4]);
		};
	}

	*prFollow { |on, bpmNow, newOffset, begins|
		tempo = bpmNow;
		offset = newOffset; // Link keeps the phase within a bar; the bars are counted here
		heard = true;
		if(on != target) {
			// At the change: the clock runs its latency early, so a little late here still sounds on
			// time. Much later (sclang started after it), from now.
			var at = begins - offset;
			if(at < (clock.beats - (lead * clock.tempo / 2))) { at = clock.beats };
			target = on;
			clock.schedAbs(at, { this.prChange(on, begins); nil });
		} {
			if(on.not) { standing = begins };
		};
		this.prWake;
	}

	// The clock's thread sleeps until its first task's time as reckoned when it went to sleep, and
	// neither Link moving the line (another peer) nor a new latency wakes it: only a task that
	// becomes the first one does (TempoClock::Add). One scheduled after the first (at now, when
	// the first is overdue on the new line) does not: a pattern that starts at the bar just past
	// waited up to a bar, and its first notes were late. Link moves the phase by less than a bar,
	// so nothing queued is two bars overdue.
	*prWake { clock.schedAbs(clock.beats - (2 * beatsPerBar), { nil }) }

	*prChange { |on, begins|
		playing = on;
		if(on) {
			players.do { |p| p.play(clock, false, Quant(beatsPerBar)) };
			onPlay.value(this.bar);
		} {
			standing = begins;
			players.do(_.stop);
			onPause.value(this.bar);
		};
		this.prSection;
	}

	*prBar {
		if(playing) { onBar.value(this.bar) };
		this.prSection;
	}

	*prSection {
		var now = this.section;
		if(now != lastSection) {
			lastSection = now;
			onSection.value(now);
		};
	}

	*prParam { |name, value|
		if(params[name] != value) {
			params[name] = value;
			paramActions[name].value(value);
		};
	}
}

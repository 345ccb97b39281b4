// A plot's canvas drawn at the size it is shown, sharp on any screen: its pixels follow its width on
// the page (a phone's is narrower than a laptop's) times the screen's pixel ratio, and it is drawn
// in CSS pixels, so a 12 px label is 12 px everywhere.
export function fitted(canvas, height, fallbackWidth = 480) {
  const width = canvas.clientWidth || fallbackWidth; // 0 while hidden
  const ratio = window.devicePixelRatio || 1;
  const [w, h] = [Math.round(width * ratio), Math.round(height * ratio)];
  if (canvas.width !== w || canvas.height !== h) Object.assign(canvas, { width: w, height: h });
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  return { g, width, height };
}

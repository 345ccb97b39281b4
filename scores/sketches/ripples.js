// Ripples: rings that spread from the centre, faster and denser with the "density" parameter.
// A Tutti sketch is an ordinary p5.js instance-mode function; `tutti` gives score time and state.
export default function ripples(p, tutti) {
  p.setup = () => {
    p.createCanvas(tutti.width, tutti.height);
    p.noFill();
  };
  p.draw = () => {
    const t = tutti.time(); // score seconds, from the synced conductor clock
    const density = tutti.param("density");
    const bright = tutti.param("brightness");
    p.clear();
    p.stroke(40 + 180 * bright, 120, 90);
    const rings = 3 + Math.round(density * 12);
    for (let i = 0; i < rings; i++) {
      const r = ((t * 40 + (i * p.width) / rings) % p.width);
      p.strokeWeight(1 + 3 * (1 - r / p.width));
      p.circle(p.width / 2, p.height / 2, r);
    }
  };
}

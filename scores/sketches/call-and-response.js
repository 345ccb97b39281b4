// An openprocessing.org sketch, as exported: global mode, and socket.io between two parts.
let socket;
let ripples = [];
let received = [];

function setup() {
  createCanvas(windowWidth, windowHeight);
  socket = io.connect("https://example-relay.herokuapp.com");
  socket.on("ripple", (data) => { received.push(data); ripples.push({ x: data.x * width, y: data.y * height, r: 0 }); });
}

function draw() {
  background(20, 24, 30);
  noFill();
  stroke(242, 193, 78);
  for (const r of ripples) { circle(r.x, r.y, r.r); r.r += 4; }
  fill(230);
  noStroke();
  textSize(24);
  text(`${tutti.part.name} ${tutti.time().toFixed(2)} s, ${received.length} heard`, 20, 40);
}

function windowResized() {
  resizeCanvas(windowWidth, windowHeight);
}

function mousePressed() {
  socket.emit("ripple", { x: mouseX / width, y: mouseY / height });
}

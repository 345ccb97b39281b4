// The audience page: joins the conductor and shows the audience view of its performance.
import { followConnection, join } from "./join.js";
import { showAudience } from "./audience-view.js";

async function main() {
  const conductor = await join({ role: "audience", name: "audience" }, { open: true });
  window.tutti = conductor;
  followConnection(conductor, document.getElementById("banner"));
  await showAudience(conductor, document.getElementById("score"), document.getElementById("stage"));
}

main();

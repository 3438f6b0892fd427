import { api, setKey, whoami } from "./common.js";

whoami({ quiet: true });
const form = document.getElementById("signin-form");
const result = document.getElementById("signin-result");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = form.elements.key.value.trim();
  setKey(key);
  try {
    const me = await api("/v1/me", { quiet: true });
    result.className = "result ok";
    result.textContent = `Signed in as ${me.name} (role ${me.role}).`;
    await whoami();
    setTimeout(() => { location.href = "/ui"; }, 400);
  } catch (error) {
    setKey(null);
    result.className = "result error";
    result.textContent = error.message;
    whoami({ quiet: true });
  }
});

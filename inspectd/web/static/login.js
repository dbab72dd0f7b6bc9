"use strict";
if (new URLSearchParams(location.search).has("failed")) {
  const box = document.getElementById("failed");
  box.className = "message error";
  box.textContent = "That token is not this station's.";
}

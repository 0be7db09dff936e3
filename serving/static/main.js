// The page's entry point: read the model card (GET /info, asking for the API key if the server
// needs one), then start the two panels and the tabs between them.

import { askKey } from "./apikey.js";
import { plainWords, request } from "./api.js";
import { renderCard } from "./card.js";
import { initClassify } from "./classify.js";
import { h, fill } from "./dom.js";
import { initTeach } from "./teach.js";

/** Tabs with the keyboard pattern of WAI-ARIA: arrows, Home and End move between them. */
function initTabs() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  const select = (tab, focus = true) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
    history.replaceState(null, "", `#${tab.dataset.hash}`);
  };
  for (const [i, tab] of tabs.entries()) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      select(tabs[(next + tabs.length) % tabs.length]);
    });
  }
  const wanted = tabs.find((t) => `#${t.dataset.hash}` === location.hash) ?? tabs[0];
  select(wanted, false);
}

async function main() {
  const cardEl = document.getElementById("card-body");
  let info;
  try {
    info = await request("info");
  } catch (error) {
    const words = plainWords(error);
    fill(
      cardEl,
      h(
        "p",
        { class: "error", role: "alert" },
        h("strong", {}, words.text),
        ` ${words.detail}`,
        " Reload the page to try again.",
      ),
    );
    return;
  }
  renderCard(cardEl, info);
  document
    .getElementById("key-button")
    .addEventListener("click", () => askKey("Type the server's API key (CLCE_API_KEY)."));
  initTabs();
  initClassify(document.getElementById("panel-classify"), info);
  initTeach(document.getElementById("panel-teach"), info);
  document.body.dataset.ready = "true";
}

main();

// The list of support sets stored on the server (GET /support-sets): open one, or delete it
// (DELETE /support-sets/{id}, after a second click to confirm).

import { plainWords, request } from "./api.js";
import { fill, h, plural } from "./dom.js";
import { forgetThumbs } from "./thumbs.js";

const CONFIRM_MS = 5000;

/**
 * `onOpen(info)` gets the set's description (GET /support-sets/{id}); `onDeleted(id)` is told after a
 * delete; `openId()` says which set the page has open. Returns {refresh}.
 */
export function initSets(root, { onOpen, onDeleted, openId }) {
  const list = root.querySelector("#set-list");
  const status = root.querySelector("#sets-status");

  /** Read the list again; `message` (e.g. what was just done) is shown above it. */
  async function refresh(message = "") {
    try {
      const { support_sets: sets } = await request("support-sets");
      status.textContent = [message, sets.length ? "" : "No saved support sets yet."].join(" ").trim();
      fill(list, sets.map(row));
    } catch (error) {
      status.textContent = plainWords(error).text;
    }
  }

  function row(set) {
    const classes = Object.keys(set.classes);
    const open = set.id === openId();
    const openButton = h(
      "button",
      { type: "button", class: "small", disabled: !set.compatible || open, onclick: () => openSet(set.id) },
      open ? "Opened" : "Open",
    );
    const deleteButton = h(
      "button",
      { type: "button", class: "small danger", onclick: () => remove(set, deleteButton) },
      "Delete",
    );
    return h(
      "li",
      { class: open ? "set open" : "set", dataset: { id: set.id, name: set.name } },
      h(
        "div",
        { class: "set-text" },
        h("span", { class: "set-name" }, set.name),
        h(
          "span",
          { class: "muted" },
          `${plural(classes.length, "class", "classes")} · ${plural(set.num_images, "image")}`,
          set.compatible ? "" : " · made with another model",
        ),
        h("span", { class: "set-classes muted" }, classes.join(", ")),
      ),
      h("div", { class: "set-buttons" }, openButton, deleteButton),
    );
  }

  async function openSet(id) {
    try {
      onOpen(await request(`support-sets/${encodeURIComponent(id)}`));
      await refresh();
    } catch (error) {
      status.textContent = plainWords(error).text;
    }
  }

  async function remove(set, button) {
    if (button.dataset.armed !== "true") {
      button.dataset.armed = "true";
      button.textContent = "Really delete?";
      setTimeout(() => {
        button.dataset.armed = "false";
        button.textContent = "Delete";
      }, CONFIRM_MS);
      return;
    }
    let message;
    try {
      await request(`support-sets/${encodeURIComponent(set.id)}`, { method: "DELETE" });
      forgetThumbs(set.id);
      onDeleted(set.id);
      message = `Deleted “${set.name}”.`;
    } catch (error) {
      message = plainWords(error).text;
    }
    await refresh(message);
  }

  return { refresh };
}

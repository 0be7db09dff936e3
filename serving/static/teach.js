// Teach by example, step 1: classes by name with their support images. Until the classes are saved
// they live in the page and travel with every few-shot request; saved (POST /support-sets) the
// server keeps their embeddings, images added later go straight to it (POST /support-sets/{id}/images)
// and queries are sent alone. A saved set can be reopened from the list, added to, or deleted.

import { formData, plainWords, request } from "./api.js";
import { classColour, dropZoneElement, fill, h, plural } from "./dom.js";
import { errorLine, newItem, prepareAll, setError, thumb } from "./items.js";
import { initQueries } from "./queries.js";
import { initSets } from "./sets.js";
import { loadThumbs, rememberThumbs } from "./thumbs.js";
import { batches, sendDroppingBadFiles } from "./upload.js";

export function initTeach(root, info) {
  // set: the stored set that is open (GET /support-sets/{id}), or null while the classes are only here.
  // classes: [{name, items: [item], kept: [data URL]}]: items added in this page, thumbnails kept by the browser.
  const state = { set: null, classes: [] };
  const list = root.querySelector("#classes");
  const status = root.querySelector("#teach-status");
  const badge = root.querySelector("#set-badge");
  const saveForm = root.querySelector("#save-set");
  const nameInput = root.querySelector("#class-name");

  const goodItems = () => state.classes.flatMap((c) => c.items.filter((i) => !i.error && !i.stored));
  const queries = initQueries(root, info, {
    source: () => (state.set ? { setId: state.set.id } : { support: goodItems() }),
    onSupportError: render,
  });
  const sets = initSets(root, {
    onOpen: open,
    onDeleted: (id) => state.set?.id === id && startNew(),
    openId: () => state.set?.id ?? null,
  });

  root.querySelector("#add-class").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = nameInput.value.trim();
    if (!name) return;
    if (state.classes.some((c) => c.name === name)) {
      status.textContent = `There is already a class “${name}”: drop more images into it.`;
      return;
    }
    state.classes.push({ name, items: [], kept: [] });
    nameInput.value = "";
    status.textContent = "";
    render();
    list.querySelector(`[data-class="${CSS.escape(name)}"] input[type=file]`)?.focus();
  });
  saveForm.addEventListener("submit", (event) => {
    event.preventDefault();
    save(root.querySelector("#set-name").value.trim());
  });
  root.querySelector("#new-set").addEventListener("click", () => {
    startNew();
    sets.refresh();
  });

  function startNew() {
    state.set = null;
    state.classes = [];
    status.textContent = "";
    render();
    queries.supportChanged();
  }

  /** Show a stored set: its classes and counts, and the thumbnails this browser kept of it. */
  function open(set) {
    const kept = loadThumbs(set.id);
    state.set = set;
    state.classes = Object.keys(set.classes).map((name) => ({ name, items: [], kept: kept[name] ?? [] }));
    status.textContent = `Opened “${set.name}”.`;
    render();
    queries.supportChanged();
  }

  async function addImages(cls, files) {
    const fresh = files.map((file) => Object.assign(newItem(file), { label: cls.name }));
    cls.items.push(...fresh);
    cls.busy = (cls.busy ?? 0) + 1; // aria-busy on the class until its images are ready
    render();
    try {
      await prepareAll(fresh, info.limits);
      if (state.set) {
        await upload(
          fresh.filter((i) => !i.error),
          state.set.id,
        );
        sets.refresh();
      }
    } finally {
      cls.busy -= 1;
    }
    render();
    queries.supportChanged();
  }

  /**
   * Send items to the server in batches within its limits: the first batch makes a new set named
   * `name` when `setId` is null, the rest are added to it. Returns the set's last description.
   */
  async function upload(items, setId, name = null) {
    let set = null;
    for (const item of items) item.sending = true;
    render();
    try {
      for (const batch of batches(items, info.limits)) {
        const sent = await sendDroppingBadFiles(
          { support: batch },
          ({ support }) => {
            const fields = {
              support: support.map((i) => i.prepared),
              support_labels: support.map((i) => i.label),
            };
            const id = set?.id ?? setId;
            if (id)
              return request(`support-sets/${encodeURIComponent(id)}/images`, {
                method: "POST",
                body: formData(fields),
              });
            return request("support-sets", { method: "POST", body: formData({ name, ...fields }) });
          },
          setError,
        );
        if (!sent) continue;
        set = sent.result;
        for (const item of sent.groups.support) item.stored = true;
        await rememberThumbs(set.id, sent.groups.support);
        state.set = set;
      }
    } catch (error) {
      for (const item of items) if (!item.stored && !item.error) setError(item, error);
      const words = plainWords(error);
      status.textContent = `${words.text} ${words.detail}`.trim();
    }
    for (const item of items) item.sending = false;
    return set;
  }

  async function save(name) {
    if (!name) {
      status.textContent = "Give the support set a name first.";
      return;
    }
    const items = goodItems();
    if (!items.length) {
      status.textContent = "Add images to at least one class first.";
      return;
    }
    status.textContent = `Saving ${plural(items.length, "image")}…`;
    const set = await upload(items, null, name);
    if (set)
      status.textContent = `Saved “${set.name}”: the server keeps its embeddings, and images you add now go straight to it.`;
    render();
    await sets.refresh();
    queries.supportChanged();
  }

  function render() {
    const stored = state.set;
    saveForm.hidden = Boolean(stored);
    fill(
      badge,
      stored
        ? h(
            "span",
            { class: "badge saved" },
            `Saved set “${stored.name}” · ${plural(stored.num_images, "image")}`,
          )
        : h(
            "span",
            { class: "badge" },
            state.classes.length ? "Not saved: kept in this page only" : "Add a class to start",
          ),
    );
    fill(list, state.classes.map(classCard));
  }

  function classCard(cls) {
    const storedCount = state.set?.classes[cls.name] ?? 0;
    const here = cls.items.filter((i) => !i.error);
    const count = state.set ? storedCount : here.length;
    const hidden = storedCount - cls.kept.length - cls.items.filter((i) => i.stored).length;
    const removable = !state.set || (storedCount === 0 && !cls.items.some((i) => i.stored));
    return h(
      "li",
      {
        class: "class",
        dataset: { class: cls.name },
        vars: { c: classColour(cls.name) },
        "aria-busy": cls.busy ? "true" : null,
      },
      h(
        "div",
        { class: "class-head" },
        h("span", { class: "swatch", "aria-hidden": "true" }),
        h("h3", { class: "class-name" }, cls.name),
        h("span", { class: "count muted" }, plural(count, "image")),
        removable
          ? h(
              "button",
              {
                type: "button",
                class: "icon",
                "aria-label": `Remove class ${cls.name}`,
                onclick: () => removeClass(cls),
              },
              "×",
            )
          : null,
      ),
      h(
        "div",
        { class: "thumbs" },
        cls.kept.map((url) => h("img", { class: "thumb small kept", src: url, alt: "" })),
        hidden > 0
          ? h(
              "span",
              {
                class: "thumb small on-server",
                title: "kept on the server; this browser has no picture of them",
              },
              `+${hidden}`,
            )
          : null,
        cls.items.map((item) => supportThumb(cls, item)),
        dropZoneElement("+ images", (files) => addImages(cls, files), {
          small: true,
          label: `Add images to ${cls.name}`,
        }),
      ),
      cls.items
        .filter((i) => i.error)
        .map((i) =>
          h(
            "div",
            { class: "file-error", dataset: { file: i.name } },
            h("span", { class: "file" }, i.name),
            errorLine(i.error),
          ),
        ),
    );
  }

  function supportThumb(cls, item) {
    const classes = ["support-item", item.error ? "failed" : "", item.sending ? "sending" : ""]
      .join(" ")
      .trim();
    return h(
      "span",
      { class: classes, dataset: { file: item.name }, title: item.note || item.name },
      thumb(item, "thumb small"),
      !state.set && !item.stored
        ? h(
            "button",
            {
              type: "button",
              class: "remove",
              "aria-label": `Remove ${item.name} from ${cls.name}`,
              onclick: () => removeItem(cls, item),
            },
            "×",
          )
        : null,
    );
  }

  function removeItem(cls, item) {
    cls.items = cls.items.filter((i) => i !== item);
    URL.revokeObjectURL(item.url);
    render();
    queries.supportChanged();
  }

  function removeClass(cls) {
    state.classes = state.classes.filter((c) => c !== cls);
    for (const item of cls.items) URL.revokeObjectURL(item.url);
    render();
    queries.supportChanged();
  }

  render();
  sets.refresh();
}

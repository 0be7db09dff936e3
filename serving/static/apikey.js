// The API key: asked for once when the server answers 401, kept in this tab's sessionStorage only
// (never localStorage, never a cookie), sent as X-API-Key. Used by the page and by the docs pages.

const STORAGE_KEY = "clce.apiKey";
let memory = null; // the key typed in this page, for when sessionStorage is switched off

function storedKey() {
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null; // storage switched off: the key is asked for again when needed
  }
}

function setKey(key) {
  try {
    sessionStorage.setItem(STORAGE_KEY, key);
  } catch {
    /* the key still works for this request */
  }
  memory = key;
}

/** The key to send: the stored one, or the one typed in this page when storage is off. */
export function currentKey() {
  return storedKey() ?? memory;
}

let dialog = null;
let pending = null;

function buildDialog() {
  const el = document.createElement("dialog");
  el.className = "key-dialog";
  el.setAttribute("aria-labelledby", "key-title");
  el.innerHTML = `
    <form method="dialog">
      <h2 id="key-title">API key needed</h2>
      <p class="key-reason"></p>
      <label for="key-input">API key</label>
      <input id="key-input" name="key" type="password" autocomplete="off" spellcheck="false" required>
      <p class="key-note">Kept in this browser tab only (session storage): closing the tab forgets it.</p>
      <div class="key-buttons">
        <button type="button" class="key-cancel">Cancel</button>
        <button type="submit" value="ok" class="primary">Use this key</button>
      </div>
    </form>`;
  el.querySelector(".key-cancel").addEventListener("click", () => el.close("cancel"));
  document.body.append(el);
  return el;
}

/**
 * Ask for the key (one dialog at a time: concurrent 401s share it). Resolves to the key, or null
 * when the person cancels.
 */
export function askKey(reason) {
  if (pending) return pending;
  dialog ??= buildDialog();
  dialog.querySelector(".key-reason").textContent = reason;
  const input = dialog.querySelector("#key-input");
  input.value = "";
  pending = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = dialog.returnValue === "ok" ? input.value.trim() : "";
        if (key) setKey(key);
        pending = null;
        resolve(key || null);
      },
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
  return pending;
}

// attach.js: the files chosen for the next message of a composer.
//
// An `AttachmentTray` owns a composer's file input and the list under it. Each
// chosen file is uploaded at once (chime.js `upload`) and listed, with its size
// and state ("Uploading…", then "Ready"), until the message that carries it is
// sent or the writer removes it. A file over the server's limit is refused
// before any byte is sent; a refused upload (413, 400) is reported with the
// server's words and dropped from the list. It knows nothing of messages:
// app.js asks it what is ready when it sends.

/** The most files one message may list (docs/protocol.md "Attachments"). */
export const MAX_FILES = 10;

/** A size for people: bytes, KiB, MiB, GiB. */
export function formatSize(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return "";
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

export class AttachmentTray {
  /**
   * @param {object} ui
   * @param {HTMLInputElement} ui.input the labelled `<input type="file" multiple>`
   * @param {HTMLUListElement} ui.list where the chosen files are listed
   * @param {object} hooks
   * @param {(file, options) => Promise<object>} hooks.upload chime.js `upload`
   * @param {() => number|null} hooks.maxBytes the server's limit (null: unknown)
   * @param {(text) => void} hooks.error report a refused file ("" clears)
   * @param {() => void} [hooks.changed] after the list changed (to update buttons)
   */
  constructor(ui, hooks) {
    this.ui = ui;
    this.hooks = hooks;
    this.items = []; // {file, state: "uploading"|"ready", record, abort}
    this.enabled = true;
    ui.input.addEventListener("change", () => {
      const files = [...ui.input.files];
      // The same file chosen again must fire `change` again.
      ui.input.value = "";
      this.add(files);
    });
  }

  /** Whether a file is still uploading (the message must wait for it). */
  get uploading() {
    return this.items.some((item) => item.state === "uploading");
  }

  get size() {
    return this.items.length;
  }

  /** The records of the uploaded files, in the order they were chosen. */
  ready() {
    return this.items.filter((item) => item.state === "ready").map((item) => item.record);
  }

  /** Allow choosing files (or not: no channel to send to). */
  enable(enabled) {
    this.enabled = enabled;
    this._render();
  }

  /** Upload `files` and list them; refuse those over the limit or past `MAX_FILES`. */
  add(files) {
    const refused = [];
    const limit = this.hooks.maxBytes();
    for (const file of files) {
      if (this.items.length >= MAX_FILES) {
        refused.push(`A message takes at most ${MAX_FILES} files: ${file.name} was not added.`);
        continue;
      }
      if (limit && file.size > limit) {
        refused.push(`${file.name} is too large (${formatSize(file.size)}); ` +
          `the largest file this server takes is ${formatSize(limit)}.`);
        continue;
      }
      this._start(file);
    }
    this.hooks.error(refused.join(" "));
    this._render();
  }

  /** Forget every file (after the message was sent, or when the composer changes place). */
  clear() {
    for (const item of this.items) item.abort.abort();
    this.items = [];
    this._render();
  }

  _start(file) {
    const item = { file, state: "uploading", record: null, abort: new AbortController() };
    this.items.push(item);
    this.hooks.upload(file, { signal: item.abort.signal }).then((record) => {
      if (!this.items.includes(item)) return;
      item.state = "ready";
      item.record = record;
      this._render();
    }, (err) => {
      if (!this.items.includes(item)) return; // removed meanwhile: nothing to say
      this.items = this.items.filter((other) => other !== item);
      this.hooks.error(`Could not attach ${file.name}: ${err.message}`);
      this._render();
    });
  }

  _remove(item) {
    item.abort.abort();
    this.items = this.items.filter((other) => other !== item);
    this._render();
    this.ui.input.focus();
  }

  _render() {
    const rows = this.items.map((item) => {
      const li = document.createElement("li");
      li.className = "pending-file";
      li.dataset.state = item.state;
      const name = document.createElement("span");
      name.className = "file-name";
      name.textContent = item.file.name;
      const size = document.createElement("span");
      size.className = "file-size";
      size.textContent = formatSize(item.file.size);
      const state = document.createElement("span");
      state.className = "file-state";
      state.textContent = item.state === "uploading" ? "Uploading…" : "Ready";
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "file-remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${item.file.name}`);
      remove.addEventListener("click", () => this._remove(item));
      li.append(name, " ", size, " ", state, " ", remove);
      return li;
    });
    this.ui.list.replaceChildren(...rows);
    this.ui.list.hidden = rows.length === 0;
    this.ui.input.disabled = !this.enabled || this.items.length >= MAX_FILES;
    this.hooks.changed?.();
  }
}

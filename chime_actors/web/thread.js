// thread.js: the thread panel. One thread at a time: its root, its replies (from
// thread history, then live), and a composer whose sends carry the threadId.
//
// app.js feeds it what chime.js reports about the thread's channel; the panel
// keeps its own copy of the thread's messages, because the root may be older
// than anything the channel's view has loaded.

import { MessagePane } from "./render.js";

const PAGE_SIZE = 50;

export class ThreadPanel {
  /**
   * @param {object} ui the panel's elements: panel, title, close, scroller, older,
   *   list, form, composer, error
   * @param {object} hooks the MessagePane hooks (me, reactions, react, edit, remove) and
   * @param {(channelId, options) => Promise<{messages, hasMore}>} hooks.history
   * @param {(channelId, content, threadId) => boolean} hooks.send false: nothing was sent
   * @param {(channelId, rootId) => object[]} hooks.known the thread's messages the page has
   * @param {(channelId, rootId) => object[]} hooks.pending the thread's unacked sends
   * @param {(channelId) => void} hooks.typing
   * @param {(channelId, rootId) => void} hooks.closed after the panel closed (to move focus)
   */
  constructor(ui, hooks) {
    this.ui = ui;
    this.hooks = hooks;
    this.pane = new MessagePane(ui.list, ui.scroller, hooks);
    this.thread = null; // {channelId, rootId, messages: Map, hasMore, loading, deleted: Set}
    ui.close.addEventListener("click", () => this.close());
    ui.older.addEventListener("click", () => this._load(this._oldestId()));
    ui.scroller.addEventListener("scroll", () => {
      if (ui.scroller.scrollTop < 40 && this.thread?.hasMore) this._load(this._oldestId());
    });
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this._sendComposed();
    });
    ui.composer.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this._sendComposed();
      }
    });
    ui.composer.addEventListener("input", () => {
      if (this.thread) hooks.typing(this.thread.channelId);
    });
    ui.panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        this.close();
      }
    });
  }

  /** Whether the panel shows a thread of `channelId` (of its root `rootId`, when given). */
  showing(channelId, rootId) {
    return Boolean(this.thread) && this.thread.channelId === channelId &&
      (rootId === undefined || this.thread.rootId === rootId);
  }

  /** A message of the open thread, if the panel has it. */
  get(channelId, messageId) {
    return this.showing(channelId) ? this.thread.messages.get(messageId) : undefined;
  }

  /** Open the thread of `rootId`: what the page knows of it at once, then its history. */
  open(channelId, rootId) {
    if (this.showing(channelId, rootId)) {
      this.ui.composer.focus();
      return;
    }
    this.thread = {
      channelId, rootId, messages: new Map(), hasMore: null, loading: false, deleted: new Set(),
    };
    for (const message of this.hooks.known(channelId, rootId)) {
      this.thread.messages.set(message.messageId, message);
    }
    this.ui.title.textContent = `Thread in # ${channelId}`;
    this.ui.error.textContent = "";
    this.ui.panel.hidden = false;
    this._render();
    this.ui.composer.value = "";
    this.ui.composer.focus();
    this._load();
  }

  close() {
    const thread = this.thread;
    if (!thread) return;
    this.thread = null;
    this.ui.panel.hidden = true;
    this.ui.list.replaceChildren();
    this.hooks.closed(thread.channelId, thread.rootId);
  }

  /** Load the thread again (after the channel's view was reset). */
  reload() {
    if (this.thread) this._load();
  }

  /** A stored message of the channel: shown if it is the root or one of its replies. */
  onMessage(message) {
    if (!this._belongs(message) || this.thread.deleted.has(message.messageId)) return;
    const known = this.thread.messages.get(message.messageId);
    if (known && known !== message) Object.assign(known, message, { reactions: known.reactions });
    else this.thread.messages.set(message.messageId, message);
    this.pane.showStored(this.thread.messages.get(message.messageId));
    this._markRoot();
  }

  onPending(send) {
    if (this.showing(send.channelId, send.threadId)) this.pane.showPending(send);
  }

  onFailed(send, reason) {
    if (this.showing(send.channelId, send.threadId)) this.pane.markFailed(send.clientMsgId, reason);
  }

  /** A message of the thread changed (an edit, a reaction): redraw it. */
  refresh(message) {
    if (this.showing(message.channelId)) this.pane.refresh(message);
  }

  onDeleted(channelId, messageId) {
    if (!this.showing(channelId)) return;
    this.thread.deleted.add(messageId);
    this.thread.messages.delete(messageId);
    this.pane.remove(messageId);
  }

  _belongs(message) {
    return this.showing(message.channelId) &&
      (message.messageId === this.thread.rootId || message.threadId === this.thread.rootId);
  }

  _oldestId() {
    let oldest;
    for (const id of this.thread?.messages.keys() ?? []) if (oldest === undefined || id < oldest) oldest = id;
    return oldest;
  }

  _render() {
    const { thread } = this;
    const messages = [...thread.messages.keys()].sort().map((id) => thread.messages.get(id));
    const stored = new Set(messages.map((m) => m.clientMsgId).filter(Boolean));
    const pending = this.hooks.pending(thread.channelId, thread.rootId)
      .filter((send) => !stored.has(send.clientMsgId));
    this.pane.render(messages, pending);
    this._markRoot();
    this._renderControls();
  }

  _markRoot() {
    this.pane.find(this.thread.rootId)?.classList.add("root");
  }

  _renderControls() {
    const { thread } = this;
    this.ui.older.hidden = !thread || thread.hasMore !== true;
    this.ui.older.disabled = Boolean(thread?.loading);
  }

  // One page of the thread's history: the newest (no `before`) or older ones.
  async _load(before) {
    const thread = this.thread;
    if (!thread || thread.loading) return;
    thread.loading = true;
    this._renderControls();
    try {
      const page = await this.hooks.history(thread.channelId, {
        threadId: thread.rootId, before, limit: PAGE_SIZE,
      });
      if (this.thread !== thread) return;
      if (before !== undefined || thread.hasMore === null) thread.hasMore = page.hasMore;
      for (const message of page.messages) {
        if (thread.deleted.has(message.messageId)) continue;
        const known = thread.messages.get(message.messageId);
        // A live copy is as new as history's; history adds the reactions it lacks.
        if (!known) thread.messages.set(message.messageId, message);
        else known.reactions ??= message.reactions;
      }
      if (before === undefined) this._render();
      else {
        this.pane.prepend(page.messages.filter((m) => !this.pane.find(m.messageId) &&
          !thread.deleted.has(m.messageId)));
        this._markRoot();
      }
    } catch (err) {
      if (this.thread === thread) this.ui.error.textContent = `Could not load the thread: ${err.message}`;
    } finally {
      thread.loading = false;
      if (this.thread === thread) this._renderControls();
    }
  }

  _sendComposed() {
    const text = this.ui.composer.value;
    // Blank text may still send: the reply's files (app.js decides).
    if (!this.thread) return;
    if (this.hooks.send(this.thread.channelId, text, this.thread.rootId)) this.ui.composer.value = "";
  }
}

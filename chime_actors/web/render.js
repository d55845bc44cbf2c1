// render.js: the DOM of a list of messages (the channel's, or a thread's).
//
// A `MessagePane` owns one <ol> of messages and the element that scrolls it. It
// builds each message's element, keeps the list in id order with pending sends
// last, and keeps the reader's place. It holds no state of its own beyond the
// DOM: app.js tells it what to show, and what the buttons of a message do.

import { formatSize } from "./attach.js";

const NEAR_BOTTOM_PX = 80;
// Shown inline as well as listed; any other type is a download link only.
const IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);

/** Whether an attachment's type is one shown as an inline thumbnail. */
export function isImage(attachment) {
  const type = (attachment.contentType ?? "").split(";")[0].trim().toLowerCase();
  return IMAGE_TYPES.has(type);
}

/** A message's time: hours and minutes today, with the date on other days. */
export function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : `${date.toLocaleDateString()} ${time}`;
}

/** A reply of a thread (a root names no thread, or itself). */
export function isReply(message) {
  return Boolean(message.threadId) && message.threadId !== message.messageId;
}

export class MessagePane {
  /**
   * @param {HTMLOListElement} list the <ol> of messages
   * @param {HTMLElement} scroller the element that scrolls it
   * @param {object} hooks
   * @param {() => string|null} hooks.me the signed-in user
   * @param {(message) => object} hooks.reactions a stored message's current reactions
   * @param {(channelId, messageId, emoji, op) => void} hooks.react
   * @param {(channelId, messageId, current) => void} hooks.edit
   * @param {(channelId, messageId) => void} hooks.remove
   * @param {(channelId, messageId) => void} [hooks.openThread] given: the pane's
   *   messages have "Reply in thread" and show their thread's reply count
   * @param {(channelId, messageId) => number} [hooks.replyCount]
   * @param {(attachment) => Promise<string>} hooks.attachmentUrl a `blob:` URL of an
   *   attachment's bytes (fetched with the user's credentials)
   * @param {(attachment) => string} hooks.downloadHref the link's URL (the download route)
   * @param {(attachment) => void} hooks.saveAttachment download it (its link was used)
   */
  constructor(list, scroller, hooks) {
    this.list = list;
    this.scroller = scroller;
    this.hooks = hooks;
  }

  /** Show exactly these stored messages and pending sends (which come last). */
  render(messages, pending) {
    const items = messages.map((message) => this.element(message, "stored"));
    for (const send of pending) items.push(this.element(send, "pending"));
    this.list.replaceChildren(...items);
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  /** Add a pending send at the end. */
  showPending(send) {
    this.place(this.element(send, "pending"), null, true);
  }

  /** Show a stored message: new, or the stored copy of a pending send. */
  showStored(message) {
    const me = this.hooks.me();
    const own = message.userId === me;
    if (this.find(message.messageId)) {
      this.refresh(message);
      if (message.clientMsgId && own) this.findPending(message.clientMsgId)?.remove();
      return;
    }
    let el = message.clientMsgId && own ? this.findPending(message.clientMsgId) : null;
    if (el) {
      el.remove();
      el.querySelector("time").dateTime = message.createdAt;
      el.querySelector("time").textContent = formatTime(message.createdAt);
      this.fill(el, message);
    } else {
      el = this.element(message, "stored");
    }
    el.dataset.messageId = message.messageId;
    setStatus(el, "stored", "");
    this.place(el, message.messageId, own);
  }

  /** Put older stored messages above the ones shown, keeping what the reader looks at in place. */
  prepend(messages) {
    if (!messages.length) return;
    const heightBefore = this.scroller.scrollHeight;
    const topBefore = this.scroller.scrollTop;
    const first = this.list.firstElementChild;
    for (const message of messages) this.list.insertBefore(this.element(message, "stored"), first);
    this.scroller.scrollTop = topBefore + (this.scroller.scrollHeight - heightBefore);
  }

  /** Redraw what may change of a stored message: content, marks, reactions, replies. */
  refresh(message) {
    const el = this.find(message.messageId);
    if (el) this.fill(el, message);
  }

  remove(messageId) {
    this.find(messageId)?.remove();
  }

  markFailed(clientMsgId, reason) {
    const el = this.findPending(clientMsgId);
    if (el) setStatus(el, "failed", `Not sent: ${reason}`);
  }

  find(messageId) {
    return this.list.querySelector(`li[data-message-id="${CSS.escape(messageId)}"]`);
  }

  findPending(clientMsgId) {
    return this.list.querySelector(
      `li[data-client-msg-id="${CSS.escape(clientMsgId)}"]:not([data-message-id])`,
    );
  }

  /** The element of a stored message or of a pending send (`status` says which). */
  element(message, status) {
    const li = document.createElement("li");
    li.className = "message";
    if (message.userId === this.hooks.me()) li.classList.add("own");
    if (message.clientMsgId) li.dataset.clientMsgId = message.clientMsgId;

    const meta = document.createElement("p");
    meta.className = "meta";
    const author = document.createElement("span");
    author.className = "author";
    author.textContent = message.userId ?? this.hooks.me() ?? "you";
    const time = document.createElement("time");
    time.dateTime = message.createdAt;
    time.title = new Date(message.createdAt).toLocaleString();
    time.textContent = formatTime(message.createdAt);
    const state = document.createElement("span");
    state.className = "status";
    meta.append(author, " ", time, " ", state);

    const content = document.createElement("p");
    content.className = "content";

    const files = document.createElement("ul");
    files.className = "attachments";
    files.hidden = true;

    const extras = document.createElement("p");
    extras.className = "extras";
    li.append(meta, content, files, extras);
    if (this.hooks.openThread) li.append(this._threadSummary(li, message));
    li.append(this._actions(li, message));
    this.fill(li, message);
    if (status === "stored") li.dataset.messageId = message.messageId;
    setStatus(li, status, status === "pending" ? "Sending…" : "");
    if (message.error) setStatus(li, "failed", `Not sent: ${message.error}`);
    return li;
  }

  fill(li, message) {
    li.querySelector(".content").textContent = message.content;
    this._fillAttachments(li.querySelector(".attachments"), message.attachments ?? []);
    const extras = li.querySelector(".extras");
    const parts = [];
    if (message.editedAt) {
      const edited = document.createElement("span");
      edited.className = "edited";
      edited.textContent = "(edited)";
      edited.title = new Date(message.editedAt).toLocaleString();
      parts.push(edited);
    }
    for (const [emoji, users] of Object.entries(message.reactions ?? {})) {
      if (!Array.isArray(users) || users.length === 0) continue;
      const reaction = document.createElement("span");
      reaction.className = "reaction";
      reaction.textContent = `${emoji} ${users.length}`;
      reaction.title = users.join(", ");
      reaction.setAttribute("aria-label", `${emoji} from ${users.join(", ")}`);
      parts.push(reaction);
    }
    extras.replaceChildren(...parts);
    extras.hidden = parts.length === 0;

    const summary = li.querySelector(".thread-summary");
    if (summary) {
      const count = message.messageId ? this.hooks.replyCount(message.channelId, message.messageId) : 0;
      summary.hidden = count === 0;
      summary.querySelector("button").textContent = count === 1 ? "1 reply" : `${count} replies`;
    }
  }

  // Each attachment as a download link (name, size), images with a thumbnail
  // too. Built once per set of files: an edit or a reaction redraws the message
  // without fetching its images again.
  _fillAttachments(list, attachments) {
    const key = attachments.map((a) => a.attachmentId).join(" ");
    if (list.dataset.files === key) return;
    list.dataset.files = key;
    list.hidden = attachments.length === 0;
    list.replaceChildren(...attachments.map((attachment) => this._attachment(attachment)));
  }

  _attachment(attachment) {
    const item = document.createElement("li");
    item.className = "attachment";
    item.dataset.attachmentId = attachment.attachmentId;
    const name = attachment.filename ?? "file";
    if (isImage(attachment)) {
      const img = document.createElement("img");
      img.className = "thumbnail";
      img.alt = name;
      img.decoding = "async";
      img.hidden = true; // until its bytes are in
      this.hooks.attachmentUrl(attachment).then((url) => {
        img.src = url;
        img.hidden = false;
      }, () => {}); // the link stays, and says what failed when used
      item.append(img);
    }
    const link = document.createElement("a");
    link.className = "attachment-link";
    link.href = this.hooks.downloadHref(attachment);
    link.download = name;
    link.textContent = name;
    link.addEventListener("click", (event) => {
      // The download needs the credentials (a token in jwt mode), which a
      // plain link cannot send: fetch it, then save what was fetched.
      event.preventDefault();
      this.hooks.saveAttachment(attachment);
    });
    const size = document.createElement("span");
    size.className = "attachment-size";
    size.textContent = formatSize(attachment.size);
    item.append(link, " ", size);
    return item;
  }

  /** Insert `el` in id order (pending ones, with no id, stay last), keeping the view steady. */
  place(el, messageId, own) {
    const scroller = this.scroller;
    const nearBottom =
      scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < NEAR_BOTTOM_PX;
    let before = null;
    if (messageId !== null) {
      // From the end: live messages land there; history is prepended in one go.
      let node = this.list.lastElementChild;
      while (node && (!node.dataset.messageId || node.dataset.messageId > messageId)) {
        before = node;
        node = node.previousElementSibling;
      }
    }
    this.list.insertBefore(el, before);
    // Follow the conversation only if the reader is at its end (or wrote this one):
    // someone reading older messages is not pulled away from them.
    if (nearBottom || own) scroller.scrollTop = scroller.scrollHeight;
  }

  // "3 replies" under a thread's root: opens the thread, like "Reply in thread".
  _threadSummary(li, message) {
    const summary = document.createElement("p");
    summary.className = "thread-summary";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "thread-open";
    open.addEventListener("click", () => {
      if (li.dataset.messageId) this.hooks.openThread(message.channelId, li.dataset.messageId);
    });
    summary.append(open);
    return summary;
  }

  // Actions on a stored message (CSS hides them until it has a messageId): a 👍 for
  // anyone, "Reply in thread" in the channel's pane, edit and delete for its
  // author. The server confirms each with the frame every subscriber gets
  // (message_edited, message_deleted, reaction); the page changes nothing itself.
  _actions(li, message) {
    const actions = document.createElement("span");
    actions.className = "actions";
    const button = (label, text, onClick) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = text;
      b.setAttribute("aria-label", label);
      b.addEventListener("click", () => {
        if (li.dataset.messageId) onClick(li.dataset.messageId);
      });
      actions.append(b);
      return b;
    };
    const { channelId } = message;
    const hooks = this.hooks;
    button("React 👍", "👍", (id) => {
      const mine = (hooks.reactions(channelId, id)["👍"] ?? []).includes(hooks.me());
      hooks.react(channelId, id, "👍", mine ? "remove" : "add");
    });
    if (hooks.openThread) {
      button("Reply in thread", "Reply", (id) => hooks.openThread(channelId, id))
        .classList.add("reply-button");
    }
    // A pending send has no userId yet: it is always our own.
    if (message.userId === undefined || message.userId === hooks.me()) {
      button("Edit message", "Edit", (id) => {
        hooks.edit(channelId, id, li.querySelector(".content").textContent);
      });
      button("Delete message", "Delete", (id) => hooks.remove(channelId, id));
    }
    return actions;
  }
}

export function setStatus(li, status, text) {
  li.dataset.status = status;
  const el = li.querySelector(".status");
  el.textContent = text;
  el.title = status === "stored" ? "Stored by the server" : "";
}

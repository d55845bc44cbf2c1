// The web chat page: renders what chime.js reports and turns input into its calls.
// All connection logic (reconnect, resume, resends) lives in chime.js; the DOM of
// a list of messages in render.js, the thread panel in thread.js, the files
// chosen for a message in attach.js.

import { AttachmentTray } from "./attach.js";
import { ChimeClient, chatUrlFor, fetchClientConfig } from "./chime.js";
import { MessagePane, isReply } from "./render.js";
import { ThreadPanel } from "./thread.js";

const SESSION_KEY = "chime.session";
const TYPING_SHOWN_MS = 5000;
// The server passes on one `typing` per user and channel every 3 s: sending more
// often would only be dropped (and count against the rate limit).
const TYPING_SENT_EVERY_MS = 3000;
// At most one `read` per channel this often: a busy channel does not cost one per
// message, and the last one always goes (a trailing send).
const READ_SENT_EVERY_MS = 1000;
const USER_ID = /^[A-Za-z0-9_.@:-]{1,64}$/;
const CHANNEL_ID = /^[A-Za-z0-9_.:-]{1,64}$/;
const NEAR_TOP_PX = 40;

const $ = (id) => document.getElementById(id);

const ui = {
  connection: $("connection"),
  whoami: $("whoami"),
  login: $("login"),
  loginForm: $("login-form"),
  loginError: $("login-error"),
  userField: $("user-field"),
  userInput: $("user-input"),
  tokenField: $("token-field"),
  tokenInput: $("token-input"),
  channelsInput: $("channels-input"),
  chat: $("chat"),
  sidebar: $("sidebar"),
  toggle: $("channels-toggle"),
  channelList: $("channel-list"),
  joinForm: $("join-form"),
  joinInput: $("join-input"),
  joinError: $("join-error"),
  logout: $("logout"),
  title: $("channel-title"),
  presence: $("presence"),
  scroller: $("scroller"),
  older: $("older"),
  historyStart: $("history-start"),
  messages: $("messages"),
  typing: $("typing"),
  composerForm: $("composer-form"),
  composer: $("composer"),
  chatError: $("chat-error"),
  threadError: $("thread-error"),
};

let config = null; // /v1/client-config
let client = null; // the ChimeClient of the session
let session = null; // {user, token, channels, active}
let lastTypingSent = 0;
const channels = new Map(); // channelId -> ChannelView
// attachmentId -> Promise of a blob: URL of its bytes: the thumbnails shown, each
// fetched once per session (revoked at sign-out).
const thumbnails = new Map();
// A saved file's blob: URL outlives the click that starts its download this long.
const DOWNLOAD_URL_KEPT_MS = 60000;

/** What the page knows of one channel, whether or not it is shown. */
class ChannelView {
  constructor(id) {
    this.id = id;
    // messageId -> ChimeMessage (+ reactions): roots and replies alike. chime.js
    // delivers a channel without gaps, so this is every message from the oldest
    // loaded on; a thread's replies are newer than its root, so every reply of a
    // root held here is held here too, and counting them gives its reply count.
    this.messages = new Map();
    this.replies = new Map(); // root messageId -> Set of its replies' messageIds
    this.pending = new Map(); // clientMsgId -> pending send (or failed, with .error)
    this.hasMore = null; // null: not known yet
    this.loadingOlder = false;
    this.unread = 0;
    this.online = null; // Set of user ids, once known
    this.typing = new Map(); // userId -> timer
    this.readSent = null; // the newest messageId sent in a `read`
    this.readSentAt = 0;
    this.readTimer = null;
  }

  oldestId() {
    let oldest = null;
    for (const id of this.messages.keys()) if (oldest === null || id < oldest) oldest = id;
    return oldest;
  }

  newestId() {
    let newest = null;
    for (const id of this.messages.keys()) if (newest === null || id > newest) newest = id;
    return newest;
  }

  /** Keep a message; returns whether it is new here. */
  add(message) {
    const fresh = !this.messages.has(message.messageId);
    this.messages.set(message.messageId, message);
    if (isReply(message)) {
      if (!this.replies.has(message.threadId)) this.replies.set(message.threadId, new Set());
      this.replies.get(message.threadId).add(message.messageId);
    }
    return fresh;
  }

  /** Forget a deleted message; returns it (or undefined if it was not here). */
  drop(messageId) {
    const message = this.messages.get(messageId);
    if (!message) return undefined;
    this.messages.delete(messageId);
    if (isReply(message)) this.replies.get(message.threadId)?.delete(messageId);
    return message;
  }

  clear() {
    this.messages.clear();
    this.replies.clear();
  }

  replyCount(rootId) {
    return this.replies.get(rootId)?.size ?? 0;
  }
}

// The buttons of a message, in the channel's pane and the thread's alike.
const paneHooks = {
  me: () => client?.userId ?? null,
  reactions: (channelId, messageId) =>
    knownCopies(channelId, messageId)[0]?.reactions ?? {},
  react: (channelId, messageId, emoji, op) => client?.react(channelId, messageId, emoji, op),
  edit: (channelId, messageId, current) => {
    const content = window.prompt("Edit your message", current);
    if (content !== null && content.trim() && content !== current) {
      client?.edit(channelId, messageId, content);
    }
  },
  remove: (channelId, messageId) => {
    if (window.confirm("Delete this message for everyone?")) client?.remove(channelId, messageId);
  },
  attachmentUrl: (attachment) => thumbnailUrl(attachment),
  downloadHref: (attachment) => client?.attachmentUrl(attachment.attachmentId) ?? "#",
  saveAttachment: (attachment) => saveAttachment(attachment),
};

// The files of the next message, and of the next reply in the thread panel.
const trayHooks = (error) => ({
  upload: (file, options) => client.upload(file, options),
  maxBytes: () => config?.maxAttachmentBytes ?? null,
  error: (text) => {
    error.textContent = text;
  },
});
const composerTray = new AttachmentTray(
  { input: $("attach-input"), list: $("attach-list") }, trayHooks(ui.chatError),
);
const threadTray = new AttachmentTray(
  { input: $("thread-attach-input"), list: $("thread-attach-list") }, trayHooks(ui.threadError),
);

const channelPane = new MessagePane(ui.messages, ui.scroller, {
  ...paneHooks,
  openThread: (channelId, rootId) => {
    // Files chosen for another thread's reply are not this one's.
    if (!threadPanel.showing(channelId, rootId)) threadTray.clear();
    threadPanel.open(channelId, rootId);
  },
  replyCount: (channelId, rootId) => channels.get(channelId)?.replyCount(rootId) ?? 0,
});

const threadPanel = new ThreadPanel({
  panel: $("thread"),
  title: $("thread-title"),
  close: $("thread-close"),
  scroller: $("thread-scroller"),
  older: $("thread-older"),
  list: $("thread-messages"),
  form: $("thread-form"),
  composer: $("thread-composer"),
  error: $("thread-error"),
}, {
  ...paneHooks,
  history: (channelId, options) => client.history(channelId, options),
  send: (channelId, content, threadId) => sendText(channelId, content, threadId, threadTray),
  known: (channelId, rootId) => {
    const view = channels.get(channelId);
    if (!view) return [];
    const ids = [rootId, ...(view.replies.get(rootId) ?? [])];
    return ids.map((id) => view.messages.get(id)).filter(Boolean);
  },
  pending: (channelId, rootId) =>
    [...(channels.get(channelId)?.pending.values() ?? [])].filter((s) => s.threadId === rootId),
  typing: (channelId) => sendTyping(channelId),
  closed: (channelId, rootId) => {
    threadTray.clear();
    // Back to where the thread was opened from, or to the message box.
    const opener = channelId === session?.active
      ? channelPane.find(rootId)?.querySelector(".reply-button") : null;
    (opener ?? ui.composer).focus();
  },
});

/** Every copy the page holds of a message (the channel's, the open thread's). */
function knownCopies(channelId, messageId) {
  const copies = new Set();
  const inView = channels.get(channelId)?.messages.get(messageId);
  if (inView) copies.add(inView);
  const inThread = threadPanel.get(channelId, messageId);
  if (inThread) copies.add(inThread);
  return [...copies];
}

// --- start ------------------------------------------------------------------------------

async function main() {
  try {
    config = await fetchClientConfig();
  } catch (err) {
    setConnection("failed", `Cannot reach the server: ${err.message}`);
    return;
  }
  const jwt = config.authMode === "jwt";
  ui.userField.hidden = jwt;
  ui.tokenField.hidden = !jwt;
  ui.userInput.required = !jwt;
  ui.composer.maxLength = config.maxContentChars;

  const fromUrl = sessionFromUrl(jwt);
  if (fromUrl) {
    saveSession(fromUrl);
    // The URL's token must not stay in the address bar or the history.
    history.replaceState(null, "", "/");
  }
  const saved = fromUrl ?? loadSession();
  if (saved && (jwt ? saved.token : saved.user)) start(saved);
  else showLogin();
}

function sessionFromUrl(jwt) {
  const params = new URLSearchParams(location.search);
  const user = params.get("user");
  const token = params.get("token");
  if (jwt ? !token : !user) return null;
  const list = parseChannels(params.get("channels") ?? "general");
  return { user: jwt ? null : user, token: jwt ? token : null, channels: list, active: list[0] };
}

function parseChannels(text) {
  return [...new Set(text.split(",").map((c) => c.trim()).filter(Boolean))];
}

function loadSession() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
  } catch {
    return null;
  }
}

function saveSession(value) {
  session = value;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
}

function showLogin(message = "") {
  ui.chat.hidden = true;
  ui.toggle.hidden = true;
  ui.login.hidden = false;
  ui.loginError.textContent = message;
  setConnection("closed", "Not connected");
  ui.whoami.textContent = "";
  (config?.authMode === "jwt" ? ui.tokenInput : ui.userInput).focus();
}

ui.loginForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const jwt = config?.authMode === "jwt";
  const list = parseChannels(ui.channelsInput.value);
  const bad = list.find((c) => !CHANNEL_ID.test(c));
  if (bad !== undefined) {
    ui.loginError.textContent = `“${bad}” is not a channel name (letters, digits, _ . : -).`;
    return;
  }
  if (jwt) {
    const token = ui.tokenInput.value.trim();
    if (!token) {
      ui.loginError.textContent = "Paste a token first.";
      return;
    }
    saveSession({ user: null, token, channels: list, active: list[0] });
  } else {
    const user = ui.userInput.value.trim();
    if (!USER_ID.test(user)) {
      ui.loginError.textContent = "Choose a user name of letters, digits and _ . @ : - (up to 64).";
      return;
    }
    saveSession({ user, token: null, channels: list, active: list[0] });
  }
  start(session);
});

function start(value) {
  session = value;
  ui.login.hidden = true;
  ui.chat.hidden = false;
  ui.toggle.hidden = false;
  channels.clear();
  client = new ChimeClient({
    url: chatUrlFor(config),
    userId: value.user ?? undefined,
    token: value.token ?? undefined,
    channels: value.channels,
    storage: sessionStorage,
    maxAttachmentBytes: config.maxAttachmentBytes,
  });
  for (const id of value.channels) channelView(id);
  for (const send of client.pendingSends()) channelView(send.channelId).pending.set(send.clientMsgId, send);
  wire(client);
  renderChannelList();
  showChannel(value.active && channels.has(value.active) ? value.active : value.channels[0] ?? null);
  client.start();
  ui.composer.focus();
}

function stop() {
  client?.close();
  client = null;
  sessionStorage.removeItem(SESSION_KEY);
  session = null;
  threadPanel.close();
  composerTray.clear();
  forgetThumbnails();
  channels.clear();
  ui.messages.replaceChildren();
  showLogin();
}

ui.logout.addEventListener("click", stop);

function channelView(id) {
  if (!channels.has(id)) channels.set(id, new ChannelView(id));
  return channels.get(id);
}

// --- what the client reports --------------------------------------------------------------

function wire(c) {
  c.on("state", ({ state, delayMs, attempt, reason }) => {
    if (c !== client) return;
    if (state === "open") setConnection("open", "Connected");
    else if (state === "connecting") setConnection("connecting", "Connecting…");
    else if (state === "reconnecting" && delayMs !== undefined) {
      setConnection("reconnecting",
        `Connection lost; reconnecting in ${Math.ceil(delayMs / 1000)} s (attempt ${attempt})…`);
    } else if (state === "reconnecting") setConnection("reconnecting", "Reconnecting…");
    else if (state === "closed" && reason && reason !== "closed by the client") {
      // Only a refused token (close 4001) ends the client: ask for another one.
      sessionStorage.removeItem(SESSION_KEY);
      client = null;
      showLogin(`The server refused the sign-in: ${reason}`);
    }
  });
  c.on("connected", ({ frame }) => {
    ui.whoami.textContent = `Signed in as ${frame.userId}`;
    // The server's counts (its read markers) replace the page's own counting.
    for (const [id, count] of Object.entries(frame.unread ?? {})) {
      if (id !== session.active) channelView(id).unread = count;
    }
    // The server may have refused some channels (a token's grants).
    const joined = new Set(frame.channels ?? []);
    for (const id of [...channels.keys()]) if (!joined.has(id)) channels.delete(id);
    rememberChannels();
    renderChannelList();
    if (!channels.has(session.active)) showChannel(channels.keys().next().value ?? null);
    for (const id of channels.keys()) askPresence(id);
    // A `read` written as the last socket died may be lost: say it again.
    const active = channels.get(session.active);
    if (active) {
      active.readSent = null;
      noteRead(active);
    }
  });
  c.on("message", ({ message, live }) => onMessage(message, live));
  c.on("synced", ({ channelId, hasMore }) => {
    const view = channels.get(channelId);
    if (!view) return;
    if (view.hasMore === null) view.hasMore = hasMore;
    if (channelId === session.active) renderHistoryControls(view);
  });
  c.on("reset", ({ channelId }) => {
    const view = channels.get(channelId);
    if (!view) return;
    view.clear();
    view.hasMore = null;
    if (channelId === session.active) renderMessages(view);
    if (threadPanel.showing(channelId)) threadPanel.reload();
  });
  c.on("pending", ({ send }) => {
    const view = channelView(send.channelId);
    view.pending.set(send.clientMsgId, send);
    if (send.threadId) threadPanel.onPending(send);
    else if (send.channelId === session.active) channelPane.showPending(send);
  });
  c.on("ack", ({ send, ack }) => {
    const view = channels.get(send.channelId);
    if (!view) return;
    view.pending.delete(send.clientMsgId);
    if (!view.messages.has(ack.messageId)) {
      view.add({
        channelId: send.channelId, messageId: ack.messageId, userId: client.userId,
        content: send.content, createdAt: ack.createdAt, editedAt: null,
        metadata: send.metadata, threadId: send.threadId, clientMsgId: send.clientMsgId,
        attachments: send.attachments?.length ? send.attachments : undefined,
      });
    }
    show(view.messages.get(ack.messageId));
    if (send.channelId === session.active) noteRead(view);
  });
  c.on("send_failed", ({ send, error }) => {
    const view = channels.get(send.channelId);
    if (!view) return;
    // Kept in the view (not in the client): the writer sees what was not sent.
    send.error = error.message;
    if (send.threadId) threadPanel.onFailed(send, error.message);
    else channelPane.markFailed(send.clientMsgId, error.message);
  });
  c.on("joined", ({ channels: added }) => {
    for (const id of added) channelView(id);
    rememberChannels();
    renderChannelList();
    for (const id of added) askPresence(id);
  });
  c.on("left", ({ channels: gone }) => {
    for (const id of gone) {
      channels.delete(id);
      if (threadPanel.showing(id)) threadPanel.close();
    }
    rememberChannels();
    renderChannelList();
    if (!channels.has(session.active)) showChannel(channels.keys().next().value ?? null);
  });
  c.on("message_edited", ({ message }) => {
    if (!message?.channelId) return;
    for (const known of knownCopies(message.channelId, message.messageId)) {
      Object.assign(known, message, { reactions: message.reactions ?? known.reactions });
      refresh(known);
    }
  });
  c.on("message_deleted", ({ channelId, messageId }) => {
    const view = channels.get(channelId);
    const gone = view?.drop(messageId);
    threadPanel.onDeleted(channelId, messageId);
    if (!gone || channelId !== session.active) return;
    channelPane.remove(messageId);
    if (isReply(gone)) refreshRoot(view, gone.threadId);
  });
  c.on("reaction", ({ channelId, messageId, emoji, userId, op }) => {
    const copies = knownCopies(channelId, messageId);
    if (!copies.length || typeof emoji !== "string") return;
    const reactions = { ...(copies[0].reactions ?? {}) };
    const users = new Set(reactions[emoji] ?? []);
    if (op === "remove") users.delete(userId);
    else users.add(userId);
    if (users.size) reactions[emoji] = [...users];
    else delete reactions[emoji];
    for (const known of copies) {
      known.reactions = reactions;
      refresh(known);
    }
  });
  c.on("typing", ({ channelId, userId }) => {
    const view = channels.get(channelId);
    if (!view || userId === client.userId) return;
    clearTimeout(view.typing.get(userId));
    view.typing.set(userId, setTimeout(() => stoppedTyping(view, userId), TYPING_SHOWN_MS));
    if (channelId === session.active) renderTyping(view);
  });
  c.on("presence", ({ channelId, userId, status }) => {
    const view = channels.get(channelId);
    if (!view) return;
    view.online ??= new Set();
    if (status === "online") view.online.add(userId);
    else view.online.delete(userId);
    if (channelId === session.active) renderPresence(view);
  });
  c.on("error", ({ error }) => showError(error.message));
}

function askPresence(channelId) {
  // Servers without presence answer with an error: then the page shows none.
  client?.presence(channelId).then((online) => {
    const view = channels.get(channelId);
    if (!view) return;
    view.online = new Set([...(view.online ?? []), ...online]);
    if (channelId === session.active) renderPresence(view);
  }, () => {});
}

function onMessage(message, live) {
  const view = channels.get(message.channelId);
  if (!view) return;
  const fresh = view.add(message);
  const ownPending = message.userId === client.userId && view.pending.has(message.clientMsgId);
  // Their message is what they were typing.
  if (live && view.typing.has(message.userId)) stoppedTyping(view, message.userId);
  show(message);
  if (message.channelId === session.active) {
    noteRead(view);
  } else if (fresh && live && message.userId !== client.userId && !ownPending) {
    view.unread += 1;
    renderChannelList();
  }
}

/** Show a stored message where it belongs: the channel's list, or its thread. */
function show(message) {
  const view = channels.get(message.channelId);
  if (!view) return;
  if (isReply(message)) {
    if (message.channelId === session.active) refreshRoot(view, message.threadId);
  } else if (message.channelId === session.active) {
    channelPane.showStored(message);
    renderHistoryControls(view);
  }
  threadPanel.onMessage(message);
}

/** Redraw a stored message wherever it is shown. */
function refresh(message) {
  if (message.channelId === session?.active) channelPane.refresh(message);
  threadPanel.refresh(message);
}

// A root's "N replies" changed.
function refreshRoot(view, rootId) {
  const root = view.messages.get(rootId);
  if (root) channelPane.refresh(root);
}

function stoppedTyping(view, userId) {
  clearTimeout(view.typing.get(userId));
  view.typing.delete(userId);
  if (view.id === session?.active) renderTyping(view);
}

function rememberChannels() {
  if (!session) return;
  saveSession({ ...session, channels: [...channels.keys()] });
}

// --- read markers ---------------------------------------------------------------------------

// What the reader has in front of them is read: the newest message of the shown
// channel, while the page is visible. The server keeps the marker, so the unread
// counts of `connected` (after a reload, on another device) agree with the page.
function noteRead(view) {
  if (!view || view.id !== session?.active || document.visibilityState !== "visible") return;
  if (view.readTimer || !unreadSince(view)) return;
  const wait = Math.max(0, view.readSentAt + READ_SENT_EVERY_MS - Date.now());
  view.readTimer = setTimeout(() => flushRead(view), wait);
}

function unreadSince(view) {
  const newest = view.newestId();
  return newest !== null && (view.readSent === null || newest > view.readSent) ? newest : null;
}

/** Send the `read` that `noteRead` has waiting, now. */
function flushRead(view) {
  clearTimeout(view.readTimer);
  view.readTimer = null;
  const newest = unreadSince(view);
  // Not connected: the next `connected` notes it again.
  if (newest === null || !client?.markRead(view.id, newest)) return;
  view.readSent = newest;
  view.readSentAt = Date.now();
}

function flushActiveRead() {
  const view = session && channels.get(session.active);
  if (view?.readTimer) flushRead(view);
}

document.addEventListener("visibilitychange", () => {
  const view = session && channels.get(session.active);
  if (document.visibilityState === "visible") noteRead(view);
  else flushActiveRead(); // what was on screen until now was seen
});
window.addEventListener("pagehide", flushActiveRead);

// --- rendering --------------------------------------------------------------------------

function setConnection(state, text) {
  ui.connection.dataset.state = state;
  ui.connection.textContent = text;
}

function showError(text) {
  ui.chatError.textContent = text;
}

function renderChannelList() {
  const items = [];
  for (const view of channels.values()) {
    const li = document.createElement("li");
    li.className = "channel";
    li.dataset.channel = view.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "channel-open";
    open.textContent = `# ${view.id}`;
    if (view.id === session?.active) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => {
      showChannel(view.id);
      closeSidebar();
      ui.composer.focus();
    });
    if (view.unread > 0) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = String(view.unread);
      badge.setAttribute("aria-label", `${view.unread} unread`);
      open.append(" ", badge);
    }
    const leave = document.createElement("button");
    leave.type = "button";
    leave.className = "channel-leave";
    leave.textContent = "Leave";
    leave.setAttribute("aria-label", `Leave ${view.id}`);
    leave.addEventListener("click", () => {
      client.leave(view.id).catch((err) => showError(err.message));
    });
    li.append(open, leave);
    items.push(li);
  }
  ui.channelList.replaceChildren(...items);
  // On a phone the list is behind a button: the button carries the total.
  const total = [...channels.values()].reduce((sum, view) => sum + view.unread, 0);
  ui.toggle.replaceChildren("Channels");
  if (total > 0) {
    const badge = document.createElement("span");
    badge.className = "unread";
    badge.textContent = String(total);
    badge.setAttribute("aria-label", `${total} unread`);
    ui.toggle.append(" ", badge);
  }
}

function showChannel(id) {
  // What the reader saw of the channel they leave was read.
  flushActiveRead();
  if (session) saveSession({ ...session, active: id });
  if (!threadPanel.showing(id)) threadPanel.close();
  const view = id === null ? null : channels.get(id);
  ui.title.textContent = view ? `# ${view.id}` : "No channel: join one";
  ui.composer.disabled = !view;
  ui.composerForm.querySelector("button").disabled = !view;
  composerTray.enable(Boolean(view));
  if (view) view.unread = 0;
  renderChannelList();
  renderMessages(view);
  renderPresence(view);
  renderTyping(view);
  noteRead(view);
}

function renderMessages(view) {
  const messages = [];
  const pending = [];
  if (view) {
    for (const id of [...view.messages.keys()].sort()) {
      const message = view.messages.get(id);
      if (!isReply(message)) messages.push(message);
    }
    const stored = new Set(messages.map((m) => m.clientMsgId).filter(Boolean));
    for (const send of view.pending.values()) {
      if (!send.threadId && !stored.has(send.clientMsgId)) pending.push(send);
    }
  }
  channelPane.render(messages, pending);
  renderHistoryControls(view);
}

function renderHistoryControls(view) {
  const more = Boolean(view) && view.hasMore !== false && view.messages.size > 0;
  ui.older.hidden = !more;
  ui.older.disabled = Boolean(view?.loadingOlder);
  ui.historyStart.hidden = !view || view.hasMore !== false;
}

function renderPresence(view) {
  ui.presence.textContent = view?.online?.size
    ? `Online: ${[...view.online].sort().join(", ")}`
    : "";
}

function renderTyping(view) {
  const who = view ? [...view.typing.keys()] : [];
  ui.typing.textContent = who.length === 0 ? ""
    : who.length === 1 ? `${who[0]} is typing…` : `${who.join(", ")} are typing…`;
}

// --- history: scrolling back ---------------------------------------------------------------

async function loadOlder() {
  const view = session && channels.get(session.active);
  if (!view || view.loadingOlder || view.hasMore === false) return;
  const before = view.oldestId();
  if (before === null) return;
  view.loadingOlder = true;
  renderHistoryControls(view);
  try {
    const page = await client.history(view.id, { before, limit: 50 });
    view.hasMore = page.hasMore;
    const added = page.messages.filter((m) => !view.messages.has(m.messageId));
    // All of the page first: its roots' reply counts include its own replies.
    for (const message of added) view.add(message);
    if (view.id === session.active) channelPane.prepend(added.filter((m) => !isReply(m)));
  } catch (err) {
    showError(`Could not load older messages: ${err.message}`);
  } finally {
    view.loadingOlder = false;
    if (view.id === session?.active) renderHistoryControls(view);
  }
}

ui.older.addEventListener("click", loadOlder);
ui.scroller.addEventListener("scroll", () => {
  if (ui.scroller.scrollTop < NEAR_TOP_PX) loadOlder();
});

// --- input ----------------------------------------------------------------------------------

ui.composerForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sendComposed();
});

ui.composer.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter is a new line; Enter that ends an IME composition is not a send.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendComposed();
  }
});

ui.composer.addEventListener("input", () => sendTyping(session?.active));

function sendTyping(channelId) {
  const now = Date.now();
  if (client?.connection && channelId && now - lastTypingSent > TYPING_SENT_EVERY_MS) {
    lastTypingSent = now;
    client.typing(channelId);
  }
}

function sendComposed() {
  if (session?.active && sendText(session.active, ui.composer.value, null, composerTray)) {
    ui.composer.value = "";
  }
}

/**
 * Send `text` (in the thread of `threadId`, if given) with the files uploaded
 * in `tray`; false if there was nothing to send, or it must wait.
 */
function sendText(channelId, text, threadId = null, tray = null) {
  if (!client) return false;
  const error = threadId ? ui.threadError : ui.chatError;
  if (tray?.uploading) {
    error.textContent = "Wait until the files are uploaded, then send.";
    return false;
  }
  const files = tray?.ready() ?? [];
  if (!text.trim()) {
    if (!files.length) return false;
    // The server stores no message without text: the files' names are its text.
    text = [...files.map((file) => file.filename).join(", ")]
      .slice(0, config.maxContentChars).join("");
  }
  if ([...text].length > config.maxContentChars) {
    error.textContent = `A message holds at most ${config.maxContentChars} characters.`;
    return false;
  }
  error.textContent = "";
  client.send(channelId, text, { threadId, attachments: files });
  tray?.clear();
  return true;
}

// --- attachments: fetched with the credentials, shown from blob: URLs ---------------------

function thumbnailUrl(attachment) {
  const id = attachment.attachmentId;
  if (!thumbnails.has(id)) {
    const url = client
      ? client.fetchAttachment(id).then((blob) => URL.createObjectURL(blob))
      : Promise.reject(new Error("not signed in"));
    // A failed fetch is tried again the next time the message is drawn.
    url.catch(() => thumbnails.delete(id));
    thumbnails.set(id, url);
  }
  return thumbnails.get(id);
}

function forgetThumbnails() {
  for (const url of thumbnails.values()) url.then((href) => URL.revokeObjectURL(href), () => {});
  thumbnails.clear();
}

async function saveAttachment(attachment) {
  const name = attachment.filename ?? "file";
  try {
    const blob = await client.fetchAttachment(attachment.attachmentId);
    // Saved, never shown: typed as bytes, so no browser renders it (an HTML file).
    const href = URL.createObjectURL(blob.slice(0, blob.size, "application/octet-stream"));
    const link = document.createElement("a");
    link.href = href;
    link.download = name;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), DOWNLOAD_URL_KEPT_MS);
  } catch (err) {
    showError(`Could not download ${name}: ${err.message}`);
  }
}

ui.joinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const id = ui.joinInput.value.trim();
  if (!CHANNEL_ID.test(id)) {
    ui.joinError.textContent = "Channel names are 1–64 letters, digits or _ . : -";
    return;
  }
  ui.joinError.textContent = "";
  ui.joinInput.value = "";
  channelView(id);
  renderChannelList();
  showChannel(id);
  client.join(id).catch((err) => showError(err.message));
  closeSidebar();
  ui.composer.focus();
});

// --- phone layout: the channel list is a panel behind a button ----------------------------

ui.toggle.addEventListener("click", () => {
  const open = ui.toggle.getAttribute("aria-expanded") !== "true";
  ui.toggle.setAttribute("aria-expanded", String(open));
  ui.sidebar.classList.toggle("open", open);
  if (open) ui.sidebar.querySelector("button, input")?.focus();
});

function closeSidebar() {
  ui.toggle.setAttribute("aria-expanded", "false");
  ui.sidebar.classList.remove("open");
}

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && ui.sidebar.classList.contains("open")) {
    closeSidebar();
    ui.toggle.focus();
  }
});

main();

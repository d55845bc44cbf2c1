// The web chat page: renders what chime.js reports and turns input into its calls.
// All connection logic (reconnect, resume, resends) lives in chime.js.

import { ChimeClient, chatUrlFor, fetchClientConfig } from "./chime.js";

const SESSION_KEY = "chime.session";
const TYPING_SHOWN_MS = 5000;
const TYPING_SENT_EVERY_MS = 3000;
// This server answers `typing` with "not supported yet" (docs/protocol.md), so the
// page only shows typing frames it receives. TODO: set to true once it passes them on.
const SEND_TYPING = false;
const USER_ID = /^[A-Za-z0-9_.@:-]{1,64}$/;
const CHANNEL_ID = /^[A-Za-z0-9_.:-]{1,64}$/;
const NEAR_BOTTOM_PX = 80;
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
};

let config = null; // /v1/client-config
let client = null; // the ChimeClient of the session
let session = null; // {user, token, channels, active}
let lastTypingSent = 0;
const channels = new Map(); // channelId -> ChannelView

/** What the page knows of one channel, whether or not it is shown. */
class ChannelView {
  constructor(id) {
    this.id = id;
    this.messages = new Map(); // messageId -> ChimeMessage (+ reactions)
    this.pending = new Map(); // clientMsgId -> pending send (or failed, with .error)
    this.hasMore = null; // null: not known yet
    this.loadingOlder = false;
    this.unread = 0;
    this.online = null; // Set of user ids, once known
    this.typing = new Map(); // userId -> timer
  }

  oldestId() {
    let oldest = null;
    for (const id of this.messages.keys()) if (oldest === null || id < oldest) oldest = id;
    return oldest;
  }
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
    view.messages.clear();
    view.hasMore = null;
    if (channelId === session.active) renderMessages(view);
  });
  c.on("pending", ({ send }) => {
    const view = channelView(send.channelId);
    view.pending.set(send.clientMsgId, send);
    if (send.channelId === session.active) {
      placeElement(messageElement(send, "pending"), null, true);
    }
  });
  c.on("ack", ({ send, ack }) => {
    const view = channels.get(send.channelId);
    if (!view) return;
    view.pending.delete(send.clientMsgId);
    if (!view.messages.has(ack.messageId)) {
      view.messages.set(ack.messageId, {
        channelId: send.channelId, messageId: ack.messageId, userId: client.userId,
        content: send.content, createdAt: ack.createdAt, editedAt: null,
        metadata: send.metadata, threadId: send.threadId, clientMsgId: send.clientMsgId,
      });
    }
    if (send.channelId === session.active) showStored(view.messages.get(ack.messageId));
  });
  c.on("send_failed", ({ send, error }) => {
    const view = channels.get(send.channelId);
    if (!view) return;
    send.error = error.message;
    const el = findPending(send.clientMsgId);
    // Kept in the view (not in the client): the writer sees what was not sent.
    if (el) setStatus(el, "failed", `Not sent: ${error.message}`);
  });
  c.on("joined", ({ channels: added }) => {
    for (const id of added) channelView(id);
    rememberChannels();
    renderChannelList();
    for (const id of added) askPresence(id);
  });
  c.on("left", ({ channels: gone }) => {
    for (const id of gone) channels.delete(id);
    rememberChannels();
    renderChannelList();
    if (!channels.has(session.active)) showChannel(channels.keys().next().value ?? null);
  });
  c.on("message_edited", ({ message }) => {
    const view = channels.get(message?.channelId);
    const known = view?.messages.get(message.messageId);
    if (!known) return;
    Object.assign(known, message, { reactions: message.reactions ?? known.reactions });
    if (message.channelId === session.active) refreshElement(known);
  });
  c.on("message_deleted", ({ channelId, messageId }) => {
    const view = channels.get(channelId);
    if (!view?.messages.delete(messageId)) return;
    if (channelId === session.active) findMessage(messageId)?.remove();
  });
  c.on("reaction", ({ channelId, messageId, emoji, userId, op }) => {
    const known = channels.get(channelId)?.messages.get(messageId);
    if (!known || typeof emoji !== "string") return;
    const reactions = { ...(known.reactions ?? {}) };
    const users = new Set(reactions[emoji] ?? []);
    if (op === "remove") users.delete(userId);
    else users.add(userId);
    if (users.size) reactions[emoji] = [...users];
    else delete reactions[emoji];
    known.reactions = reactions;
    if (channelId === session.active) refreshElement(known);
  });
  c.on("typing", ({ channelId, userId }) => {
    const view = channels.get(channelId);
    if (!view || userId === client.userId) return;
    clearTimeout(view.typing.get(userId));
    view.typing.set(userId, setTimeout(() => {
      view.typing.delete(userId);
      if (channelId === session.active) renderTyping(view);
    }, TYPING_SHOWN_MS));
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
  const fresh = !view.messages.has(message.messageId);
  view.messages.set(message.messageId, message);
  const ownPending = message.userId === client.userId && view.pending.has(message.clientMsgId);
  if (message.channelId === session.active) {
    showStored(message);
  } else if (fresh && live && message.userId !== client.userId && !ownPending) {
    view.unread += 1;
    renderChannelList();
  }
}

function rememberChannels() {
  if (!session) return;
  saveSession({ ...session, channels: [...channels.keys()] });
}

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
  if (session) saveSession({ ...session, active: id });
  const view = id === null ? null : channels.get(id);
  ui.title.textContent = view ? `# ${view.id}` : "No channel: join one";
  ui.composer.disabled = !view;
  ui.composerForm.querySelector("button").disabled = !view;
  if (view) view.unread = 0;
  renderChannelList();
  renderMessages(view);
  renderPresence(view);
  renderTyping(view);
}

function renderMessages(view) {
  const items = [];
  if (view) {
    for (const id of [...view.messages.keys()].sort()) {
      items.push(messageElement(view.messages.get(id), "stored"));
    }
    for (const send of view.pending.values()) {
      if (!storedCopy(view, send)) items.push(messageElement(send, "pending"));
    }
  }
  ui.messages.replaceChildren(...items);
  renderHistoryControls(view);
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
}

function storedCopy(view, send) {
  for (const message of view.messages.values()) {
    if (message.clientMsgId === send.clientMsgId && message.userId === client.userId) return message;
  }
  return null;
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

function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : `${date.toLocaleDateString()} ${time}`;
}

/** The element of a stored message or of a pending send (`status` says which). */
function messageElement(message, status) {
  const li = document.createElement("li");
  li.className = "message";
  if (message.userId === client?.userId) li.classList.add("own");
  if (message.clientMsgId) li.dataset.clientMsgId = message.clientMsgId;

  const meta = document.createElement("p");
  meta.className = "meta";
  const author = document.createElement("span");
  author.className = "author";
  author.textContent = message.userId ?? client?.userId ?? "you";
  const time = document.createElement("time");
  time.dateTime = message.createdAt;
  time.title = new Date(message.createdAt).toLocaleString();
  time.textContent = formatTime(message.createdAt);
  const state = document.createElement("span");
  state.className = "status";
  meta.append(author, " ", time, " ", state);

  const content = document.createElement("p");
  content.className = "content";
  content.textContent = message.content;

  const extras = document.createElement("p");
  extras.className = "extras";
  li.append(meta, content, extras, messageActions(li, message));
  fillMessage(li, message);
  if (status === "stored") li.dataset.messageId = message.messageId;
  setStatus(li, status, status === "pending" ? "Sending…" : "");
  if (message.error) setStatus(li, "failed", `Not sent: ${message.error}`);
  return li;
}

// Actions on a stored message (CSS hides them until it has a messageId): a 👍 for
// anyone, edit and delete for its author. The server confirms each with the
// frame every subscriber gets (message_edited, message_deleted, reaction).
function messageActions(li, message) {
  const actions = document.createElement("span");
  actions.className = "actions";
  const button = (label, text, onClick) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.setAttribute("aria-label", label);
    b.addEventListener("click", () => {
      const messageId = li.dataset.messageId;
      if (messageId && client) onClick(messageId);
    });
    actions.append(b);
  };
  const channelId = message.channelId;
  button("React 👍", "👍", (id) => {
    const mine = (messageReactions(channelId, id)["👍"] ?? []).includes(client.userId);
    client.react(channelId, id, "👍", mine ? "remove" : "add");
  });
  // A pending send has no userId yet: it is always our own.
  if (message.userId === undefined || message.userId === client?.userId) {
    button("Edit message", "Edit", (id) => {
      const current = li.querySelector(".content").textContent;
      const content = window.prompt("Edit your message", current);
      if (content !== null && content.trim() && content !== current) {
        client.edit(channelId, id, content);
      }
    });
    button("Delete message", "Delete", (id) => {
      if (window.confirm("Delete this message for everyone?")) client.remove(channelId, id);
    });
  }
  return actions;
}

function messageReactions(channelId, messageId) {
  return channels.get(channelId)?.messages.get(messageId)?.reactions ?? {};
}

function fillMessage(li, message) {
  li.querySelector(".content").textContent = message.content;
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
}

function setStatus(li, status, text) {
  li.dataset.status = status;
  const el = li.querySelector(".status");
  el.textContent = text;
  el.title = status === "stored" ? "Stored by the server" : "";
}

function findMessage(messageId) {
  return ui.messages.querySelector(`li[data-message-id="${CSS.escape(messageId)}"]`);
}

function findPending(clientMsgId) {
  return ui.messages.querySelector(
    `li[data-client-msg-id="${CSS.escape(clientMsgId)}"]:not([data-message-id])`,
  );
}

function refreshElement(message) {
  const el = findMessage(message.messageId);
  if (el) fillMessage(el, message);
}

/** Show a stored message of the shown channel: new, or the stored copy of a pending send. */
function showStored(message) {
  if (findMessage(message.messageId)) {
    refreshElement(message);
    if (message.clientMsgId && message.userId === client.userId) findPending(message.clientMsgId)?.remove();
    return;
  }
  let el = message.clientMsgId && message.userId === client.userId
    ? findPending(message.clientMsgId) : null;
  if (el) {
    el.remove();
    el.querySelector("time").dateTime = message.createdAt;
    el.querySelector("time").textContent = formatTime(message.createdAt);
    fillMessage(el, message);
  } else {
    el = messageElement(message, "stored");
  }
  el.dataset.messageId = message.messageId;
  setStatus(el, "stored", "");
  placeElement(el, message.messageId, message.userId === client.userId);
  renderHistoryControls(channels.get(message.channelId));
}

/** Insert `el` in id order (pending ones, with no id, stay last), keeping the view steady. */
function placeElement(el, messageId, own) {
  const scroller = ui.scroller;
  const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < NEAR_BOTTOM_PX;
  let before = null;
  if (messageId !== null) {
    // From the end: live messages land there; history is prepended in one go elsewhere.
    let node = ui.messages.lastElementChild;
    while (node && (!node.dataset.messageId || node.dataset.messageId > messageId)) {
      before = node;
      node = node.previousElementSibling;
    }
  }
  ui.messages.insertBefore(el, before);
  // Follow the conversation only if the reader is at its end (or wrote this one):
  // someone reading older messages is not pulled away from them.
  if (nearBottom || own) scroller.scrollTop = scroller.scrollHeight;
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
    for (const message of added) view.messages.set(message.messageId, message);
    if (view.id === session.active && added.length) {
      const heightBefore = ui.scroller.scrollHeight;
      const topBefore = ui.scroller.scrollTop;
      const first = ui.messages.firstElementChild;
      for (const message of added) ui.messages.insertBefore(messageElement(message, "stored"), first);
      // Keep what the reader looks at in place while older messages appear above.
      ui.scroller.scrollTop = topBefore + (ui.scroller.scrollHeight - heightBefore);
    }
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

ui.composer.addEventListener("input", () => {
  const now = Date.now();
  if (client?.connection && session?.active && SEND_TYPING && now - lastTypingSent > TYPING_SENT_EVERY_MS) {
    lastTypingSent = now;
    client.typing(session.active);
  }
});

function sendComposed() {
  const text = ui.composer.value;
  if (!text.trim() || !session?.active || !client) return;
  if ([...text].length > config.maxContentChars) {
    showError(`A message holds at most ${config.maxContentChars} characters.`);
    return;
  }
  ui.chatError.textContent = "";
  client.send(session.active, text);
  ui.composer.value = "";
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

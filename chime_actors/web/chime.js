// chime.js: a Chime chat client for browsers (an ES module, no dependencies).
//
// It speaks the WebSocket protocol of docs/protocol.md and reads history over
// REST, and it owns everything that makes a chat client reliable, so that a page
// only renders events:
//
// * connect, and reconnect with exponential backoff and jitter when the socket
//   closes (except after a refused token, close 4001);
// * resume every channel from the last message id seen, so a reconnect has no
//   gaps and no duplicates; a channel with nothing seen yet (or whose resume
//   failed) is caught up from REST history instead;
// * keep every send pending until its `ack`, and resend unacked sends with the
//   same `clientMsgId` after a reconnect (the server stores each once);
// * deliver each message of a channel once, in id order, as a `message` event;
// * upload files and fetch attachments with the user's credentials.
//
// It knows nothing of the DOM. See docs/web-client.md for the API and an example.

/** Close code of a refused or expired token: reconnecting would not help. */
export const CLOSE_UNAUTHORIZED = 4001;

const DEFAULTS = Object.freeze({
  initialHistory: 50,
  backoffBaseMs: 500,
  backoffMaxMs: 15000,
  // Retries of a send the server answered `unavailable` (not stored) wait this long.
  retryUnavailableMs: 1000,
  // An app-level ping after this much silence; a second silence closes the socket.
  heartbeatMs: 25000,
});

// Error codes after which a send is given up: resending the same frame would be
// refused again. `unavailable` and `rate_limited` are retried.
const FINAL_SEND_ERRORS = new Set([
  "bad_request", "too_large", "not_subscribed", "forbidden", "unauthorized", "not_found",
]);

/** A docs/protocol.md error frame (or HTTP problem), as a rejected promise's reason. */
export class ChimeError extends Error {
  constructor(code, message, frame = null) {
    super(message || code);
    this.name = "ChimeError";
    this.code = code;
    this.frame = frame;
  }
}

/**
 * Fetch `/v1/client-config` from the API origin: the auth mode and the chat port.
 * @param {string} [apiUrl] the API's base URL (default: the page's origin)
 */
export async function fetchClientConfig(apiUrl = globalThis.location?.origin) {
  const response = await fetch(new URL("/v1/client-config", apiUrl), { cache: "no-store" });
  if (!response.ok) throw new ChimeError("unavailable", `client-config: HTTP ${response.status}`);
  return response.json();
}

/**
 * The chat WebSocket URL for a client config: the chat port on the host the page
 * was loaded from (ws: or wss: to match http: or https:).
 */
export function chatUrlFor(config, pageUrl = globalThis.location?.href) {
  const page = new URL(pageUrl);
  const scheme = page.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${page.hostname.includes(":") ? `[${page.hostname}]` : page.hostname}` +
    `:${config.chatPort}${config.chatPath || "/"}`;
}

// An attachment as a message lists it; an id alone stands for a file not described.
function attachmentRecord(attachment) {
  if (typeof attachment === "string") return { attachmentId: attachment };
  const { attachmentId, filename, contentType, size } = attachment;
  return { attachmentId, filename, contentType, size };
}

// A REST answer that is not ok as a ChimeError: an RFC 9457 problem's `code`
// (docs/protocol.md's) and `detail` (the human text), else the status.
function problemError(response, body, what) {
  return new ChimeError(
    body.code ?? (response.status === 413 ? "too_large" : "unavailable"),
    body.detail ?? body.title ?? `${what}: HTTP ${response.status}`,
    body, // the problem itself: retryAfterMs with rate_limited
  );
}

function randomId() {
  const bytes = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A Chime connection that survives disconnects.
 *
 * Events (subscribe with `on(type, callback)`; callbacks get one object):
 * - `state` {state: "connecting"|"open"|"reconnecting"|"closed", attempt, delayMs, reason}
 * - `connected` {frame}: the handshake's reply (`userId`, `channels`, `unread`)
 * - `message` {message, live}: each message of a subscribed channel once, in order
 *   (`live` is false for replayed and caught-up ones)
 * - `synced` {channelId, hasMore}: a channel's newest page was delivered (after a
 *   join, or a reconnect with nothing seen before); `hasMore`: older ones exist
 * - `reset` {channelId}: the missed messages were too many to replay; what follows
 *   is the newest page, so drop what you show of the channel and page back again
 * - `pending` {send}, `ack` {send, ack}, `send_failed` {send, error}
 * - `joined` {channels}, `left` {channels}
 * - `message_edited` {message}, `message_deleted` {channelId, messageId},
 *   `reaction` {channelId, messageId, emoji, userId, op},
 *   `typing` {channelId, userId}, `presence` {channelId, userId, status}
 * - `error` {error}: an error frame not tied to a request of ours
 */
export class ChimeClient {
  /**
   * @param {object} options
   * @param {string} options.url the chat WebSocket URL (see `chatUrlFor`)
   * @param {string} [options.apiUrl] the API's base URL for REST history (default: page origin)
   * @param {string} [options.userId] the user in insecure mode
   * @param {string} [options.token] a JWT in jwt mode
   * @param {string[]} [options.channels] channels to join at the first connect
   * @param {Storage} [options.storage] where unacked sends are kept across reloads
   *   (e.g. `sessionStorage`); without it they live as long as the object
   * @param {number} [options.initialHistory] messages fetched when a channel is joined
   * @param {number} [options.maxAttachmentBytes] the largest file `upload` sends
   *   (`maxAttachmentBytes` of `/v1/client-config`); a larger one is refused
   *   without a request. Without it the server's 413 says so.
   */
  constructor(options) {
    this.options = { ...DEFAULTS, ...options };
    this.userId = options.userId ?? null;
    this.token = options.token ?? null;
    this.channels = [...new Set(options.channels ?? [])];
    this.state = "closed";
    this.connection = null; // the `connected` frame of the current socket
    this._listeners = new Map();
    this._socket = null;
    this._generation = 0; // bumped per socket: late answers of an old one are dropped
    this._attempt = 0;
    this._reconnectTimer = null;
    this._heartbeatTimer = null;
    this._heard = true;
    this._lastSeen = new Map(); // channelId -> newest messageId delivered
    this._syncing = new Map(); // channelId -> live messages held back during a catch-up
    this._replaying = new Set(); // channels whose resume replay has not ended yet
    this._pending = new Map(); // clientMsgId -> pending send, in send order
    this._requests = new Map(); // requestId -> {resolve, reject}
    this._storageKey = `chime.pending.${options.userId ?? "token"}`;
    this._loadPending();
  }

  // --- events ---------------------------------------------------------------------

  /** Call `callback(event)` for each event of `type`; returns a function that stops it. */
  on(type, callback) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(callback);
    return () => this._listeners.get(type)?.delete(callback);
  }

  _emit(type, event) {
    for (const callback of this._listeners.get(type) ?? []) {
      try {
        callback(event);
      } catch (err) {
        // A page's bug must not stop the client (or the other listeners).
        console.error(`chime: ${type} listener failed`, err);
      }
    }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, ...extra });
  }

  // --- connection -----------------------------------------------------------------

  /** Open the connection (and keep it open until `close()`). */
  start() {
    if (this._socket || this._reconnectTimer) return;
    this._closedByUs = false;
    this._open();
  }

  /** Close for good: no reconnect. Pending sends stay pending (and stored). */
  close() {
    this._closedByUs = true;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._stopHeartbeat();
    if (this._socket) this._socket.close(1000, "client closed");
    this._dropSocket();
    this._setState("closed", { reason: "closed by the client" });
  }

  _open() {
    this._reconnectTimer = null;
    const generation = ++this._generation;
    this._setState(this._attempt === 0 ? "connecting" : "reconnecting", { attempt: this._attempt });
    let socket;
    try {
      socket = new WebSocket(this.options.url);
    } catch (err) {
      this._scheduleReconnect(`cannot open: ${err.message}`);
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      if (generation === this._generation) this._sendConnect();
    };
    socket.onmessage = (event) => {
      if (generation === this._generation) this._receive(event.data);
    };
    socket.onclose = (event) => {
      if (generation !== this._generation) return;
      this._dropSocket();
      if (this._closedByUs) return;
      if (event.code === CLOSE_UNAUTHORIZED) {
        this._setState("closed", { reason: event.reason || "unauthorized", code: event.code });
        return;
      }
      this._scheduleReconnect(event.reason || `closed (${event.code})`);
    };
  }

  _dropSocket() {
    this._generation++;
    this._socket = null;
    this.connection = null;
    this._stopHeartbeat();
    // Held-back live messages are replayed by the next connect's resume.
    this._syncing.clear();
    for (const { reject } of this._requests.values()) {
      reject(new ChimeError("unavailable", "disconnected"));
    }
    this._requests.clear();
  }

  _scheduleReconnect(reason) {
    // Full jitter between half and all of the exponential delay, so clients a
    // restart dropped together do not all come back in the same instant.
    const ceiling = Math.min(
      this.options.backoffMaxMs, this.options.backoffBaseMs * 2 ** Math.min(this._attempt, 16),
    );
    const delayMs = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
    this._attempt++;
    this._setState("reconnecting", { attempt: this._attempt, delayMs, reason });
    this._reconnectTimer = setTimeout(() => this._open(), delayMs);
  }

  /** Reconnect now instead of waiting out the backoff (e.g. when the network is back). */
  reconnectNow() {
    if (this._reconnectTimer) {
      clearTimeout(this._reconnectTimer);
      this._open();
    }
  }

  _sendConnect() {
    const frame = { type: "connect", channels: this.channels };
    if (this.token) frame.token = this.token;
    else if (this.userId) frame.userId = this.userId;
    const resume = {};
    for (const channelId of this.channels) {
      const last = this._lastSeen.get(channelId);
      if (last) resume[channelId] = last;
    }
    if (Object.keys(resume).length) frame.resume = resume;
    this._replaying = new Set(Object.keys(resume));
    this._write(frame);
  }

  _write(frame) {
    if (!this._socket || this._socket.readyState !== WebSocket.OPEN) return false;
    this._socket.send(JSON.stringify(frame));
    return true;
  }

  _startHeartbeat(intervalMs) {
    this._stopHeartbeat();
    this._heard = true;
    this._heartbeatTimer = setInterval(() => {
      if (!this._heard) {
        // Two intervals without a frame: the socket is dead even if the
        // browser has not noticed yet (a half-open TCP connection).
        this._socket?.close(4000, "heartbeat missed");
        return;
      }
      this._heard = false;
      this._write({ type: "ping" });
    }, intervalMs);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
  }

  // --- frames in ------------------------------------------------------------------

  _receive(data) {
    this._heard = true;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // the server sends JSON; anything else is not ours to act on
    }
    switch (frame.type) {
      case "connected": return this._onConnected(frame);
      case "message": return this._onMessage(frame.message);
      case "ack": return this._onAck(frame);
      case "error": return this._onError(frame);
      case "resumed": return this._replaying.delete(frame.channelId);
      case "resume_failed":
        this._replaying.delete(frame.channelId);
        return this._catchUp(frame.channelId, { reset: true });
      case "subscribed": return this._onSubscribed(frame.channels ?? []);
      case "unsubscribed": return this._onUnsubscribed(frame.channels ?? []);
      case "history": case "presence": case "refreshed":
        return this._settle(frame.requestId, frame);
      case "message_edited": return this._emit("message_edited", { message: frame.message });
      case "message_deleted": return this._emit("message_deleted", frame);
      case "reaction": return this._emit("reaction", frame);
      case "typing": return this._emit("typing", frame);
      case "presence_changed": return this._emit("presence", frame);
      default: return undefined; // pong, and frames newer than this client
    }
  }

  _onConnected(frame) {
    this.connection = frame;
    this.userId = frame.userId;
    this._attempt = 0;
    const joined = new Set(frame.channels ?? []);
    this.channels = this.channels.filter((c) => joined.has(c));
    const { heartbeatMs } = this.options;
    this._startHeartbeat(Math.max(1000, Math.min(frame.heartbeatMs || heartbeatMs, heartbeatMs)));
    this._setState("open");
    this._emit("connected", { frame });
    // Channels resumed by the server need nothing more; the others are caught
    // up from history (their first join, or nothing was seen before the drop).
    for (const channelId of this.channels) {
      if (!this._lastSeen.has(channelId)) this._catchUp(channelId);
    }
    for (const send of this._pending.values()) this._transmit(send);
  }

  _onMessage(message) {
    if (!message || !this.channels.includes(message.channelId)) return;
    const held = this._syncing.get(message.channelId);
    if (held) {
      held.push(message);
      return;
    }
    this._deliver(message, !this._replaying.has(message.channelId));
  }

  _deliver(message, live) {
    const last = this._lastSeen.get(message.channelId);
    // Ids of one channel compare as strings in order, and each channel is
    // delivered in order: anything not newer was delivered already.
    if (last !== undefined && message.messageId <= last) return;
    this._lastSeen.set(message.channelId, message.messageId);
    this._emit("message", { message, live });
  }

  _onAck(frame) {
    const send = this._pending.get(frame.clientMsgId);
    if (!send) return; // a duplicate ack of a resend
    this._pending.delete(frame.clientMsgId);
    this._savePending();
    this._emit("ack", { send, ack: frame });
  }

  _onError(frame) {
    const error = new ChimeError(frame.code, frame.message, frame);
    if (frame.requestId && this._requests.has(frame.requestId)) {
      this._settle(frame.requestId, null, error);
      return;
    }
    const send = frame.clientMsgId ? this._pending.get(frame.clientMsgId) : undefined;
    if (!send) {
      this._emit("error", { error });
      return;
    }
    if (FINAL_SEND_ERRORS.has(frame.code)) {
      this._pending.delete(send.clientMsgId);
      this._savePending();
      this._emit("send_failed", { send, error });
      return;
    }
    // Not stored (`unavailable`) or refused for now (`rate_limited`): the same
    // clientMsgId again later; the server stores it at most once.
    const delay = frame.retryAfterMs ?? this.options.retryUnavailableMs;
    setTimeout(() => {
      if (this._pending.has(send.clientMsgId)) this._transmit(send);
    }, delay);
  }

  _onSubscribed(channels) {
    const added = channels.filter((c) => !this.channels.includes(c));
    this.channels.push(...added);
    for (const channelId of added) {
      if (!this._lastSeen.has(channelId)) this._catchUp(channelId);
    }
    this._settle(`subscribe:${channels.join(",")}`, channels);
    if (added.length) this._emit("joined", { channels: added });
  }

  _onUnsubscribed(channels) {
    const gone = new Set(channels);
    const left = this.channels.filter((c) => gone.has(c));
    this.channels = this.channels.filter((c) => !gone.has(c));
    for (const channelId of gone) {
      this._lastSeen.delete(channelId);
      this._syncing.delete(channelId);
    }
    this._settle(`unsubscribe:${channels.join(",")}`, channels);
    if (left.length) this._emit("left", { channels: left });
  }

  /**
   * Deliver a channel's newest page from REST history, holding back live
   * messages meanwhile, then the held-back ones: nothing twice, nothing skipped.
   * The subscription is already active, so whatever the read misses arrives live.
   */
  async _catchUp(channelId, { reset = false } = {}) {
    if (this._syncing.has(channelId)) return;
    const generation = this._generation;
    const held = [];
    this._syncing.set(channelId, held);
    try {
      const page = await this.history(channelId, { limit: this.options.initialHistory });
      if (generation !== this._generation || this._syncing.get(channelId) !== held) return;
      if (reset) {
        this._lastSeen.delete(channelId);
        this._emit("reset", { channelId });
      }
      this._syncing.delete(channelId);
      for (const message of page.messages) this._deliver(message, false);
      for (const message of held) this._deliver(message, true);
      this._emit("synced", { channelId, hasMore: page.hasMore });
    } catch (err) {
      if (this._syncing.get(channelId) !== held) return;
      this._syncing.delete(channelId);
      this._emit("error", { error: err });
      // Live messages still flow; reading the page again on the next connect
      // (nothing seen yet) or with the next resume fills the view.
      for (const message of held) this._deliver(message, true);
    }
  }

  _settle(key, value, error = null) {
    const request = key !== undefined ? this._requests.get(key) : undefined;
    if (!request) return;
    this._requests.delete(key);
    if (error) request.reject(error);
    else request.resolve(value);
  }

  _request(key, frame) {
    return new Promise((resolve, reject) => {
      if (!this._write(frame)) {
        reject(new ChimeError("unavailable", "not connected"));
        return;
      }
      this._requests.set(key, { resolve, reject });
    });
  }

  // --- frames out -----------------------------------------------------------------

  /**
   * Send a message. It stays pending until the server's `ack` (then `ack` is
   * emitted) and is resent with the same `clientMsgId` after a reconnect.
   * `attachments` lists files you uploaded (`upload`'s records, or their ids):
   * the frame carries the ids, the pending send keeps the records to show.
   * @returns the pending send: {clientMsgId, channelId, content, metadata, threadId,
   *   attachments, createdAt}
   */
  send(channelId, content, { metadata, threadId, attachments } = {}) {
    const send = {
      clientMsgId: `c-${randomId()}`,
      channelId,
      content,
      metadata: metadata ?? {},
      threadId: threadId ?? null,
      attachments: (attachments ?? []).map(attachmentRecord),
      createdAt: new Date().toISOString(),
      userId: this.userId,
    };
    this._pending.set(send.clientMsgId, send);
    this._savePending();
    this._emit("pending", { send });
    this._transmit(send);
    return send;
  }

  /** Sends not acked yet, oldest first. */
  pendingSends() {
    return [...this._pending.values()];
  }

  _transmit(send) {
    if (!this.connection) return; // resent by the next `connected`
    const frame = {
      type: "send",
      channelId: send.channelId,
      content: send.content,
      clientMsgId: send.clientMsgId,
      metadata: send.metadata,
    };
    if (send.threadId) frame.threadId = send.threadId;
    if (send.attachments?.length) frame.attachments = send.attachments.map((a) => a.attachmentId);
    this._write(frame);
  }

  /**
   * Join channels; resolves with the `subscribed` channels, whose newest page of
   * history then follows as `message` events. While disconnected, the channels
   * are joined by the next connect.
   */
  join(...channels) {
    channels = [...new Set(channels)];
    if (!this.connection) {
      const added = channels.filter((c) => !this.channels.includes(c));
      this.channels.push(...added);
      if (added.length) this._emit("joined", { channels: added });
      return Promise.resolve(channels);
    }
    return this._request(`subscribe:${channels.join(",")}`, { type: "subscribe", channels });
  }

  /** Leave channels; resolves with the `unsubscribed` channels. */
  leave(...channels) {
    channels = [...new Set(channels)];
    if (!this.connection) {
      this._onUnsubscribed(channels);
      return Promise.resolve(channels);
    }
    return this._request(`unsubscribe:${channels.join(",")}`, { type: "unsubscribe", channels });
  }

  /**
   * One page of a channel's history over REST, oldest first: `{messages, hasMore}`.
   * Page back with `before` = the oldest messageId you have.
   */
  async history(channelId, { before, after, limit, threadId } = {}) {
    const url = new URL(
      `/v1/channels/${encodeURIComponent(channelId)}/messages`,
      this.options.apiUrl ?? globalThis.location.origin,
    );
    for (const [key, value] of Object.entries({ before, after, limit, threadId })) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    const response = await fetch(url, { headers, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      // An RFC 9457 problem: `code` is docs/protocol.md's, `detail` the human text.
      throw new ChimeError(body.code ?? "unavailable", body.detail ?? body.title ??
        `history: HTTP ${response.status}`);
    }
    return { messages: body.messages ?? [], hasMore: Boolean(body.hasMore) };
  }

  // --- attachments ----------------------------------------------------------------

  /**
   * Upload a file (a `File`, or any `Blob` with `filename` given) with
   * `POST /v1/attachments`. Resolves with the server's record
   * `{attachmentId, filename, contentType, size, sha256}`: pass it (or its id)
   * in `send`'s `attachments`. Rejects with a `ChimeError`: `too_large` (over
   * `maxAttachmentBytes`, then without a request, or the server's 413),
   * `bad_request` (an empty file, a bad name), `unauthorized`, `unavailable`
   * (the network); `message` is the server's `detail`. `signal` aborts it.
   * Works whether or not the socket is connected.
   */
  async upload(file, { filename, contentType, signal } = {}) {
    const name = filename ?? file.name;
    if (!name) throw new ChimeError("bad_request", "the file needs a name");
    const limit = this.options.maxAttachmentBytes;
    if (limit && file.size > limit) {
      throw new ChimeError("too_large",
        `${name} is ${file.size} bytes; the largest file this server takes is ${limit} bytes`);
    }
    const url = new URL("/v1/attachments", this.options.apiUrl ?? globalThis.location.origin);
    url.searchParams.set("filename", name);
    const headers = {
      ...this._credentials(),
      "Content-Type": contentType || file.type || "application/octet-stream",
    };
    let response;
    try {
      response = await fetch(url, { method: "POST", headers, body: file, signal, cache: "no-store" });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ChimeError("unavailable", `upload failed: ${err.message}`);
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw problemError(response, body, "upload");
    return body;
  }

  /** The download URL of an attachment (it needs the credentials: see `fetchAttachment`). */
  attachmentUrl(attachmentId) {
    return new URL(
      `/v1/attachments/${encodeURIComponent(attachmentId)}`,
      this.options.apiUrl ?? globalThis.location.origin,
    ).href;
  }

  /**
   * An attachment's bytes as a `Blob` (of its stored type), fetched with the
   * credentials (a Bearer token in jwt mode), which a plain link or `<img src>`
   * cannot send: show it with `URL.createObjectURL`. Rejects with a `ChimeError`
   * (`not_found` for a file you may not read).
   */
  async fetchAttachment(attachmentId, { signal } = {}) {
    let response;
    try {
      response = await fetch(this.attachmentUrl(attachmentId), {
        headers: this._credentials(), signal, cache: "no-store",
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ChimeError("unavailable", `download failed: ${err.message}`);
    }
    if (!response.ok) {
      throw problemError(response, await response.json().catch(() => ({})), "download");
    }
    return response.blob();
  }

  // Who is asking, for the attachment routes: the token, or the user in insecure mode.
  _credentials() {
    if (this.token) return { Authorization: `Bearer ${this.token}` };
    return this.userId ? { "X-Chime-User": this.userId } : {};
  }

  /** Edit one of your messages (`message_edited` follows). */
  edit(channelId, messageId, content) {
    const requestId = `r-${randomId()}`;
    this._write({ type: "edit", requestId, channelId, messageId, content });
    return requestId;
  }

  /** Delete one of your messages (`message_deleted` follows). */
  remove(channelId, messageId) {
    const requestId = `r-${randomId()}`;
    this._write({ type: "delete", requestId, channelId, messageId });
    return requestId;
  }

  /** Add (or with `op: "remove"` take back) a reaction. */
  react(channelId, messageId, emoji, op = "add") {
    this._write({ type: "react", channelId, messageId, emoji, op });
  }

  /** Tell the channel you are typing (the server passes on one per 3 s). */
  typing(channelId) {
    this._write({ type: "typing", channelId });
  }

  /**
   * Store your read marker: everything of the channel up to `messageId` is read.
   * The server does not answer it; returns false when not connected (nothing
   * was sent: say it again after the next `connected`).
   */
  markRead(channelId, messageId) {
    return this._write({ type: "read", channelId, messageId });
  }

  /** Who is online in a channel: resolves with the user ids. */
  async presence(channelId) {
    const requestId = `r-${randomId()}`;
    const frame = await this._request(requestId, { type: "presence", requestId, channelId });
    return frame.online ?? [];
  }

  /** Replace the token before it expires (jwt mode); resolves with the `refreshed` frame. */
  refresh(token) {
    this.token = token;
    const requestId = `r-${randomId()}`;
    return this._request(requestId, { type: "refresh", requestId, token });
  }

  // --- pending sends across reloads -----------------------------------------------

  _loadPending() {
    const { storage } = this.options;
    if (!storage) return;
    try {
      for (const send of JSON.parse(storage.getItem(this._storageKey) ?? "[]")) {
        this._pending.set(send.clientMsgId, send);
      }
    } catch {
      storage.removeItem(this._storageKey);
    }
  }

  _savePending() {
    const { storage } = this.options;
    if (!storage) return;
    if (this._pending.size) storage.setItem(this._storageKey, JSON.stringify(this.pendingSends()));
    else storage.removeItem(this._storageKey);
  }
}

// The session behind the chat screen: turns the SDK's events into the view
// (conversations, lines, marks, typing) and the person's input into SDK
// calls. The screen only sees `ChatController` (chat-view.ts).
import { randomUUID } from 'node:crypto';
import {
  ChatEvent,
  ConnectionState,
  IdentityStatus,
  SecureChatError,
  SecureChatErrorCode,
  type GroupInfo,
  type GroupUpdated,
  type IdentityChanged,
  type IncomingMessage,
  type OutboxSendFailed,
  type OutboxSent,
  type Receipt,
  type SecureChatClient,
  type SentGroupMessage,
  type SentMessage,
  type Typing,
} from '@chat/signal-sdk';
import { CliError, describeError, identityChangedText, type ErrorContext } from '../errors.js';
import {
  DeliveryMark,
  LineKind,
  directConversation,
  groupConversation,
  type ChatController,
  type ChatLine,
  type ChatStatus,
  type ChatView,
  type ConversationId,
  type ConversationSummary,
} from './chat-view.js';
import { ChatHistory, DEFAULT_HISTORY_LIMIT, type AppRecordSource, type StoredLine } from './history.js';
import { HELP_TEXT, parseInputLine, type SlashCommand } from './slash-commands.js';

/** What the session uses of the SDK client (a fake in unit specs). */
export type ChatClient = Pick<
  SecureChatClient,
  | 'on'
  | 'off'
  | 'connectionState'
  | 'send'
  | 'sendReadReceipt'
  | 'sendTyping'
  | 'safetyNumber'
  | 'verifySafetyNumber'
  | 'acceptIdentity'
  | 'listDevices'
  | 'approveLink'
  | 'unlinkDevice'
  | 'groups'
  | 'createGroup'
  | 'addGroupMembers'
  | 'removeGroupMember'
  | 'sendGroupMessage'
  | 'close'
>;

/** The store the session keeps its history in, and closes on quit. */
export interface SessionStores extends AppRecordSource {
  close(): Promise<void>;
}

export interface ChatSessionOptions {
  client: ChatClient;
  stores: SessionStores;
  username: string;
  deviceId: number;
  /** For error sentences (`cannot reach the relay at ...`). */
  relayUrl?: string;
  /** Groups need the relay's trust root; without it `/group` says how to give one. */
  groupsEnabled?: boolean;
  now?: () => number;
  /** While the draft is non-empty, "typing" is sent again after this long (ms). */
  typingRefreshMs?: number;
  /** An incoming "typing" with no stop is shown for at most this long (ms). */
  typingShownMs?: number;
  historyLimit?: number;
  /** Lines of the open conversation in the view. */
  viewLines?: number;
}

/** A message this run received, as `inbox` prints it. */
export interface ReceivedEntry {
  id: string;
  /** The other party (the sender, or for a sync copy the recipient). */
  conversation: string;
  from: string;
  text: string;
  timestamp: number;
  group?: { id: string; title: string };
}

const MARK_ORDER: Record<DeliveryMark, number> = {
  [DeliveryMark.Sending]: 0,
  [DeliveryMark.Sent]: 1,
  [DeliveryMark.Delivered]: 2,
  [DeliveryMark.Read]: 3,
  [DeliveryMark.Failed]: -1,
};

/** Send failures after which the SDK keeps the message in its outbox and sends it later. */
const STILL_QUEUED = new Set<SecureChatErrorCode>([
  SecureChatErrorCode.Network,
  SecureChatErrorCode.ConnectionLost,
  SecureChatErrorCode.Timeout,
  SecureChatErrorCode.SessionExpired,
  SecureChatErrorCode.CredentialsChanged,
  SecureChatErrorCode.DeviceUnlinked,
  SecureChatErrorCode.StoreFailure,
]);

/** Background errors the connection state already shows. */
const QUIET_ERRORS = new Set<SecureChatErrorCode>([SecureChatErrorCode.Network, SecureChatErrorCode.ConnectionLost, SecureChatErrorCode.AckFailed]);

/** Receipts that came before the send they name was confirmed (kept briefly, bounded). */
const MAX_EARLY_RECEIPTS = 1_000;

const peerOf = (conversation: ConversationId): string | null => (conversation.startsWith('direct:') ? conversation.slice('direct:'.length) : null);
const groupIdOf = (conversation: ConversationId): string | null => (conversation.startsWith('group:') ? conversation.slice('group:'.length) : null);
const targetOf = (conversation: ConversationId): { peer: string } | { groupId: string } =>
  conversation.startsWith('direct:') ? { peer: conversation.slice('direct:'.length) } : { groupId: conversation.slice('group:'.length) };

function formatSafetyNumber(digits: string): string {
  return digits.match(/.{1,5}/g)?.join(' ') ?? digits;
}

function formatDate(ms: number): string {
  const date = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

export class ChatSession implements ChatController {
  readonly ended: Promise<void>;
  /** Why the session ended on its own (this device unlinked, credentials changed); null after a quit. */
  endReason: string | null = null;
  /** Messages received in this run, in order (for `inbox`). */
  readonly received: ReceivedEntry[] = [];

  private readonly client: ChatClient;
  private readonly stores: SessionStores;
  private readonly history: ChatHistory;
  private readonly username: string;
  private readonly deviceId: number;
  private readonly relayUrl?: string;
  private readonly groupsEnabled: boolean;
  private readonly now: () => number;
  private readonly typingRefreshMs: number;
  private readonly typingShownMs: number;
  private readonly viewLines: number;

  private connection: ConnectionState;
  private openId: ConversationId | null = null;
  private status: ChatStatus | null = null;
  private readonly listeners = new Set<() => void>();
  private cachedView: ChatView | null = null;
  private readonly groupsById = new Map<string, GroupInfo>();
  /** Outgoing line ids by the content timestamp receipts name. */
  private readonly outgoingByTimestamp = new Map<number, string>();
  private readonly earlyReceipts = new Map<number, DeliveryMark>();
  /** Peers typing to this account, with the timer that hides them. */
  private readonly typingPeers = new Map<string, NodeJS.Timeout>();
  /** The peer this account last told "typing", and when. */
  private typingTo: { peer: string; at: number } | null = null;
  /** Store writes and SDK calls started without awaiting, awaited on quit. */
  private readonly pending = new Set<Promise<unknown>>();
  private quitting: Promise<void> | null = null;
  private resolveEnded!: () => void;
  private queueEmptyWaiters: Array<() => void> = [];
  private readonly unsubscribeClient: () => void;

  private constructor(options: ChatSessionOptions, history: ChatHistory) {
    this.client = options.client;
    this.stores = options.stores;
    this.history = history;
    this.username = options.username;
    this.deviceId = options.deviceId;
    this.relayUrl = options.relayUrl;
    this.groupsEnabled = options.groupsEnabled ?? true;
    this.now = options.now ?? Date.now;
    this.typingRefreshMs = options.typingRefreshMs ?? 3_000;
    this.typingShownMs = options.typingShownMs ?? 15_000;
    this.viewLines = options.viewLines ?? 300;
    this.connection = options.client.connectionState;
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
    for (const stored of history.all()) {
      if (stored.line.kind === LineKind.Outgoing && stored.contentTimestamp !== undefined) {
        this.outgoingByTimestamp.set(stored.contentTimestamp, stored.line.id);
      }
    }
    this.unsubscribeClient = this.listen();
  }

  /**
   * Loads the history and starts listening to `client`; call before
   * `client.connect()` so that no message is missed.
   */
  static async open(options: ChatSessionOptions): Promise<ChatSession> {
    const history = await ChatHistory.load(options.stores, options.historyLimit ?? DEFAULT_HISTORY_LIMIT);
    const session = new ChatSession(options, history);
    await session.refreshGroups().catch(() => undefined);
    return session;
  }

  // --- ChatController ---------------------------------------------------------

  view(): ChatView {
    this.cachedView ??= this.buildView();
    return this.cachedView;
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  openConversation(id: ConversationId): void {
    if (this.openId && this.openId !== id) this.stopTyping();
    this.openId = id;
    if (!this.history.conversations.has(id)) {
      const peer = peerOf(id);
      const title = peer ?? this.groupsById.get(groupIdOf(id) ?? '')?.title ?? id;
      this.track(this.history.saveConversation({ id, kind: peer ? 'direct' : 'group', title, createdAt: this.now() }));
    }
    this.markOpenConversationRead();
    this.changed();
  }

  async submit(line: string): Promise<void> {
    const input = parseInputLine(line);
    try {
      if (input.kind === 'usage') return this.setStatus('error', input.text);
      if (input.kind === 'command') return await this.runCommand(input.command);
      if (input.text.length === 0) return;
      if (!this.openId) return this.setStatus('error', 'open a conversation first: /open <username>');
      this.stopTyping();
      const conversation = this.openId;
      const target = targetOf(conversation);
      const queued = 'peer' in target ? this.startDirectSend(target.peer, input.text) : this.startGroupSend(target.groupId, input.text);
      // The mark follows later; a failure is shown on the line and in the status.
      this.track(queued.done.catch(() => undefined));
      await queued.saved;
    } catch (error) {
      this.setStatus('error', describeError(error, this.errorContext()));
    }
  }

  draftChanged(text: string): void {
    const peer = this.openId ? peerOf(this.openId) : null;
    const composing = text.trim().length > 0 && !text.startsWith('/');
    if (!peer || !composing) {
      this.stopTyping();
      return;
    }
    const now = this.now();
    if (this.typingTo?.peer === peer && now - this.typingTo.at < this.typingRefreshMs) return;
    this.typingTo = { peer, at: now };
    this.track(this.client.sendTyping(peer, true).catch(() => undefined));
  }

  quit(): Promise<void> {
    this.quitting ??= this.shutDown();
    return this.quitting;
  }

  // --- one-shot commands --------------------------------------------------------

  /**
   * Sends `text` to `peer` and resolves once the relay accepted it (`send`).
   * The line is kept in the history like one typed on the screen.
   * @throws {SecureChatError} as `SecureChatClient.send`.
   */
  async sendDirect(peer: string, text: string): Promise<SentMessage> {
    const { saved, done } = this.startDirectSend(peer.toLowerCase(), text);
    await saved;
    return done;
  }

  /**
   * Sends `text` to the group named by its title or id.
   * @throws {SecureChatError} as `SecureChatClient.sendGroupMessage`; `InvalidArgument` for an unknown group.
   */
  async sendToGroup(titleOrId: string, text: string): Promise<SentGroupMessage> {
    await this.refreshGroups();
    const group = this.findGroup(titleOrId);
    if (!group) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, `there is no group named ${titleOrId}`);
    const { saved, done } = this.startGroupSend(group.id, text);
    await saved;
    return done;
  }

  /** Resolves at the client's next `queueEmpty` (everything waiting at connect was handled). */
  whenQueueEmpty(): Promise<void> {
    return new Promise((resolve) => this.queueEmptyWaiters.push(resolve));
  }

  // --- SDK events ---------------------------------------------------------------

  private listen(): () => void {
    const onMessage = (message: IncomingMessage) => this.onMessage(message);
    const onState = (state: ConnectionState) => {
      this.connection = state;
      this.changed();
    };
    const onQueueEmpty = () => {
      const waiters = this.queueEmptyWaiters;
      this.queueEmptyWaiters = [];
      for (const resolve of waiters) resolve();
    };
    const onSent = (sent: OutboxSent) => this.onOutboxSent(sent.id, sent.timestamp);
    const onSendFailed = (failed: OutboxSendFailed) => this.onSendFailed(failed.id, failed.timestamp, failed.error, failed.recipient);
    const onReceipt = (receipt: Receipt) => this.onReceipt(receipt);
    const onTyping = (typing: Typing) => this.onTyping(typing);
    const onIdentityChanged = (change: IdentityChanged) => this.onIdentityChanged(change);
    const onGroupUpdated = (update: GroupUpdated) => this.onGroupUpdated(update);
    const onError = (error: SecureChatError) => this.onClientError(error);
    const client = this.client;
    client.on(ChatEvent.Message, onMessage);
    client.on(ChatEvent.ConnectionState, onState);
    client.on(ChatEvent.QueueEmpty, onQueueEmpty);
    client.on(ChatEvent.Sent, onSent);
    client.on(ChatEvent.SendFailed, onSendFailed);
    client.on(ChatEvent.Receipt, onReceipt);
    client.on(ChatEvent.Typing, onTyping);
    client.on(ChatEvent.IdentityChanged, onIdentityChanged);
    client.on(ChatEvent.GroupUpdated, onGroupUpdated);
    client.on(ChatEvent.Error, onError);
    return () => {
      client.off(ChatEvent.Message, onMessage);
      client.off(ChatEvent.ConnectionState, onState);
      client.off(ChatEvent.QueueEmpty, onQueueEmpty);
      client.off(ChatEvent.Sent, onSent);
      client.off(ChatEvent.SendFailed, onSendFailed);
      client.off(ChatEvent.Receipt, onReceipt);
      client.off(ChatEvent.Typing, onTyping);
      client.off(ChatEvent.IdentityChanged, onIdentityChanged);
      client.off(ChatEvent.GroupUpdated, onGroupUpdated);
      client.off(ChatEvent.Error, onError);
    };
  }

  /** Kept in the store before the listener returns: the SDK acks the message only then. */
  private async onMessage(message: IncomingMessage): Promise<void> {
    const text = message.text ?? `[${message.body.length} bytes that are not text]`;
    const from = message.outgoing ? this.username : message.sender;
    let conversation: ConversationId;
    if (message.group) {
      conversation = groupConversation(message.group.id);
      await this.history.saveConversation({ id: conversation, kind: 'group', title: message.group.title, createdAt: this.now() });
    } else {
      conversation = directConversation(message.conversation);
      await this.history.saveConversation({ id: conversation, kind: 'direct', title: message.conversation, createdAt: this.now() });
    }
    const line: ChatLine = message.outgoing
      ? { id: message.id, kind: LineKind.Outgoing, from, text, timestamp: message.timestamp, mark: DeliveryMark.Sent }
      : { id: message.id, kind: LineKind.Incoming, from, text, timestamp: message.timestamp };
    const stored: StoredLine = { conversation, line };
    if (message.outgoing) {
      stored.contentTimestamp = message.timestamp;
      this.outgoingByTimestamp.set(message.timestamp, line.id);
    } else {
      stored.unread = true;
      this.hideTyping(message.sender);
    }
    await this.history.save(stored);
    this.received.push({
      id: message.id,
      conversation: message.conversation,
      from,
      text,
      timestamp: message.timestamp,
      ...(message.group ? { group: { id: message.group.id, title: message.group.title } } : {}),
    });
    if (conversation === this.openId) this.markOpenConversationRead();
    this.changed();
  }

  private onOutboxSent(id: string, timestamp: number): void {
    const stored = this.history.get(id);
    if (!stored) return;
    this.outgoingByTimestamp.set(timestamp, id);
    this.updateLine({ ...stored, contentTimestamp: timestamp }, DeliveryMark.Sent);
    this.applyEarlyReceipt(timestamp);
  }

  private onSendFailed(id: string, timestamp: number, error: unknown, peer: string | null): void {
    const stored = this.history.get(id);
    const reason = describeError(error, { ...this.errorContext(), peer: peer ?? undefined });
    if (stored) {
      this.updateLine(timestamp > 0 ? { ...stored, contentTimestamp: timestamp } : stored, DeliveryMark.Failed, true);
      this.addLine(stored.conversation, LineKind.Warning, `not sent: ${reason}`);
    }
    this.setStatus('error', reason);
  }

  private onReceipt(receipt: Receipt): void {
    const mark = receipt.type === 'read' ? DeliveryMark.Read : DeliveryMark.Delivered;
    for (const timestamp of receipt.timestamps) {
      const id = this.outgoingByTimestamp.get(timestamp);
      const stored = id ? this.history.get(id) : undefined;
      if (stored) this.updateLine(stored, mark);
      else this.keepEarlyReceipt(timestamp, mark);
    }
  }

  private onTyping(typing: Typing): void {
    if (!typing.typing) {
      this.hideTyping(typing.sender);
      this.changed();
      return;
    }
    clearTimeout(this.typingPeers.get(typing.sender));
    const timer = setTimeout(() => {
      this.typingPeers.delete(typing.sender);
      this.changed();
    }, this.typingShownMs);
    timer.unref();
    this.typingPeers.set(typing.sender, timer);
    this.changed();
  }

  private onIdentityChanged(change: IdentityChanged): void {
    const conversation = directConversation(change.username);
    this.track(this.history.saveConversation({ id: conversation, kind: 'direct', title: change.username, createdAt: this.now() }));
    const text =
      change.status === IdentityStatus.Changed
        ? identityChangedText(change.username)
        : `${change.username}'s safety number changed. Compare it with /safety and /verify.`;
    this.addLine(conversation, LineKind.Warning, text);
  }

  private onGroupUpdated(update: GroupUpdated): void {
    this.groupsById.set(update.group.id, update.group);
    const conversation = groupConversation(update.group.id);
    this.track(this.history.saveConversation({ id: conversation, kind: 'group', title: update.group.title, createdAt: this.now() }));
    const parts: string[] = [];
    if (update.removedSelf) parts.push(`${update.author} removed you from ${update.group.title}`);
    else if (update.group.revision === 1) {
      // The group's first state: everyone in it is new.
      const others = update.group.members.filter((member) => member !== update.author && member !== this.username);
      parts.push(`${update.author} created ${update.group.title} with you${others.length > 0 ? `, ${others.join(', ')}` : ''}`);
    } else {
      if (update.added.length > 0) parts.push(`${update.author} added ${update.added.join(', ')}`);
      if (update.removed.length > 0) parts.push(`${update.author} removed ${update.removed.join(', ')}`);
      if (parts.length === 0) parts.push(`${update.author} updated ${update.group.title}`);
    }
    this.addLine(conversation, LineKind.Notice, parts.join('; '));
  }

  private onClientError(error: SecureChatError): void {
    if (error.is(SecureChatErrorCode.DeviceUnlinked) || error.is(SecureChatErrorCode.CredentialsChanged)) {
      this.endReason = describeError(error, this.errorContext());
      this.setStatus('error', this.endReason);
      void this.quit();
      return;
    }
    if (QUIET_ERRORS.has(error.code)) return;
    this.setStatus('error', describeError(error, this.errorContext()));
  }

  // --- sending ---------------------------------------------------------------

  /** `saved`: the line is in the history (mark `sending`); `done`: the relay accepted or refused it. */
  private startDirectSend(peer: string, text: string): { saved: Promise<void>; done: Promise<SentMessage> } {
    const conversation = directConversation(peer);
    const id = randomUUID();
    const line: ChatLine = { id, kind: LineKind.Outgoing, from: this.username, text, timestamp: this.now(), mark: DeliveryMark.Sending };
    const saved = this.history
      .saveConversation({ id: conversation, kind: 'direct', title: peer, createdAt: this.now() })
      .then(() => this.history.save({ conversation, line }))
      .then(() => this.changed());
    const done = saved.then(() => this.client.send(peer, text, { id }));
    done.then(
      (sent) => this.onOutboxSent(id, sent.timestamp),
      (error: unknown) => {
        if (SecureChatError.is(error) && STILL_QUEUED.has(error.code)) {
          this.setStatus('error', `not sent yet (it goes when the relay is back): ${describeError(error, this.errorContext())}`);
        } else {
          this.onSendFailed(id, 0, error, peer);
        }
      },
    );
    return { saved, done };
  }

  private startGroupSend(groupId: string, text: string): { saved: Promise<void>; done: Promise<SentGroupMessage> } {
    const conversation = groupConversation(groupId);
    const id = randomUUID();
    const line: ChatLine = { id, kind: LineKind.Outgoing, from: this.username, text, timestamp: this.now(), mark: DeliveryMark.Sending };
    const title = this.groupsById.get(groupId)?.title ?? groupId;
    const saved = this.history
      .saveConversation({ id: conversation, kind: 'group', title, createdAt: this.now() })
      .then(() => this.history.save({ conversation, line }))
      .then(() => this.changed());
    const done = saved.then(() => this.client.sendGroupMessage(groupId, text, { id }));
    done.then(
      (sent) => this.onOutboxSent(id, sent.timestamp),
      (error: unknown) => this.onSendFailed(id, 0, error, null),
    );
    return { saved, done };
  }

  private stopTyping(): void {
    const typingTo = this.typingTo;
    if (!typingTo) return;
    this.typingTo = null;
    this.track(this.client.sendTyping(typingTo.peer, false).catch(() => undefined));
  }

  // --- commands ---------------------------------------------------------------

  private async runCommand(command: SlashCommand): Promise<void> {
    switch (command.name) {
      case 'open':
        return this.openTarget(command.target);
      case 'safety': {
        const { peer, conversation } = this.requireDirect('/safety');
        const safety = await this.withPeer(peer, () => this.client.safetyNumber(peer));
        this.addLine(conversation, LineKind.Notice, `Safety number with ${peer}: ${formatSafetyNumber(safety.displayable)}`);
        return this.setStatus('info', `compare it with ${peer}'s screen, then /verify <the 60 digits>`);
      }
      case 'verify': {
        const { peer, conversation } = this.requireDirect('/verify');
        await this.withPeer(peer, () => this.client.verifySafetyNumber(peer, command.digits));
        this.addLine(conversation, LineKind.Notice, `${peer} is verified`);
        return this.setStatus('info', `${peer} is verified`);
      }
      case 'accept': {
        const { peer, conversation } = this.requireDirect('/accept');
        await this.withPeer(peer, () => this.client.acceptIdentity(peer));
        this.addLine(conversation, LineKind.Notice, `${peer}'s new safety number is trusted`);
        return this.setStatus('info', `${peer}'s new safety number is trusted; messages to ${peer} go again`);
      }
      case 'devices': {
        const devices = await this.client.listDevices();
        const lines = devices.map(
          (device) => `device ${device.deviceId}${device.current ? ' (this device)' : ''} linked ${formatDate(device.createdAt)}`,
        );
        if (this.openId) for (const text of lines) this.addLine(this.openId, LineKind.Notice, text);
        return this.setStatus('info', this.openId ? `${devices.length} device(s)` : lines.join('; '));
      }
      case 'link':
        await this.client.approveLink(command.uri);
        return this.setStatus('info', 'the new device is approved; it finishes linking on its own');
      case 'unlink':
        await this.client.unlinkDevice(command.deviceId);
        return this.setStatus('info', `device ${command.deviceId} is unlinked`);
      case 'group-create': {
        this.requireGroups();
        const group = await this.client.createGroup(command.title, command.members.map((member) => member.toLowerCase()));
        this.groupsById.set(group.id, group);
        const conversation = groupConversation(group.id);
        await this.history.saveConversation({ id: conversation, kind: 'group', title: group.title, createdAt: this.now() });
        this.openConversation(conversation);
        this.addLine(conversation, LineKind.Notice, `created ${group.title} with ${group.members.filter((m) => m !== this.username).join(', ')}`);
        return this.setStatus('info', `group ${group.title} created`);
      }
      case 'group-add': {
        const { groupId, conversation } = this.requireGroup('/group add');
        const group = await this.client.addGroupMembers(groupId, command.members.map((member) => member.toLowerCase()));
        this.groupsById.set(group.id, group);
        this.addLine(conversation, LineKind.Notice, `you added ${command.members.join(', ')}`);
        return this.setStatus('info', `${group.title}: ${group.members.join(', ')}`);
      }
      case 'group-remove': {
        const { groupId, conversation } = this.requireGroup('/group remove');
        const group = await this.client.removeGroupMember(groupId, command.member.toLowerCase());
        this.groupsById.set(group.id, group);
        this.addLine(conversation, LineKind.Notice, `you removed ${command.member}`);
        return this.setStatus('info', `${group.title}: ${group.members.join(', ')}`);
      }
      case 'help':
        return this.setStatus('info', HELP_TEXT);
      case 'quit':
        return this.quit();
    }
  }

  private openTarget(target: string): void {
    const group = this.findGroup(target);
    if (group) return this.openConversation(groupConversation(group.id));
    const peer = target.toLowerCase();
    if (!/^[a-z0-9_.]{3,32}$/.test(peer)) return this.setStatus('error', `there is no group or user named ${target}`);
    this.openConversation(directConversation(peer));
    this.setStatus('info', `talking to ${peer}`);
  }

  private findGroup(titleOrId: string): GroupInfo | undefined {
    const byId = this.groupsById.get(titleOrId);
    if (byId) return byId;
    const wanted = titleOrId.toLowerCase();
    return [...this.groupsById.values()].find((group) => group.member && group.title.toLowerCase() === wanted);
  }

  private async refreshGroups(): Promise<void> {
    if (!this.groupsEnabled) return;
    for (const group of await this.client.groups()) this.groupsById.set(group.id, group);
  }

  /** Runs a peer command, naming the peer in its error. */
  private async withPeer<T>(peer: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      throw new CommandError(describeError(error, { ...this.errorContext(), peer }));
    }
  }

  /** The open direct conversation and its peer. */
  private requireDirect(command: string): { peer: string; conversation: ConversationId } {
    const conversation = this.openId;
    const peer = conversation ? peerOf(conversation) : null;
    if (!conversation || !peer) throw new CommandError(`${command} works in a conversation with one person: /open <username> first`);
    return { peer, conversation };
  }

  private requireGroups(): void {
    if (!this.groupsEnabled) {
      throw new CommandError("groups need the relay's trust root: start chat-cli with --trust-root <key> or CHAT_TRUST_ROOT");
    }
  }

  /** The open group conversation and its group id. */
  private requireGroup(command: string): { groupId: string; conversation: ConversationId } {
    this.requireGroups();
    const conversation = this.openId;
    const groupId = conversation ? groupIdOf(conversation) : null;
    if (!conversation || !groupId) throw new CommandError(`${command} works in an open group: /open <group title> first`);
    return { groupId, conversation };
  }


  // --- the view ---------------------------------------------------------------

  private buildView(): ChatView {
    const conversations: ConversationSummary[] = [...this.history.conversations.values()]
      .map((conversation) => ({
        id: conversation.id,
        kind: conversation.kind,
        title: this.groupsById.get(groupIdOf(conversation.id) ?? '')?.title ?? conversation.title,
        unread: this.history.unread(conversation.id),
        lastActivity: this.history.lastActivity(conversation.id),
      }))
      .sort((a, b) => b.lastActivity - a.lastActivity);
    const open = this.openId;
    const lines = open ? this.history.lines(open).slice(-this.viewLines).map((stored) => stored.line) : [];
    const openPeer = open ? peerOf(open) : null;
    return {
      username: this.username,
      deviceId: this.deviceId,
      connection: this.connection,
      conversations,
      open,
      lines,
      typing: openPeer && this.typingPeers.has(openPeer) ? [openPeer] : [],
      status: this.status,
    };
  }

  private changed(): void {
    this.cachedView = null;
    for (const listener of this.listeners) {
      try {
        listener();
      } catch {
        // A screen's listener failing must not stop the session.
      }
    }
  }

  private setStatus(level: ChatStatus['level'], text: string): void {
    this.status = { level, text };
    this.changed();
  }

  private addLine(conversation: ConversationId, kind: LineKind.Notice | LineKind.Warning, text: string): void {
    const line: ChatLine = { id: randomUUID(), kind, from: '', text, timestamp: this.now() };
    this.track(this.history.save({ conversation, line }));
    this.changed();
  }

  /** Moves a line's mark forward (never back, except to `failed` when `force`), keeping its content timestamp. */
  private updateLine(stored: StoredLine, mark: DeliveryMark, force = false): void {
    const current = stored.line.mark ?? DeliveryMark.Sending;
    const forward = force || (current !== DeliveryMark.Failed && MARK_ORDER[mark] > MARK_ORDER[current]);
    if (!forward && this.history.get(stored.line.id)?.contentTimestamp === stored.contentTimestamp) return;
    this.track(this.history.save(forward ? { ...stored, line: { ...stored.line, mark } } : stored));
    this.changed();
  }

  private keepEarlyReceipt(timestamp: number, mark: DeliveryMark): void {
    const known = this.earlyReceipts.get(timestamp);
    if (known && MARK_ORDER[known] >= MARK_ORDER[mark]) return;
    this.earlyReceipts.set(timestamp, mark);
    const oldest = this.earlyReceipts.keys().next();
    if (this.earlyReceipts.size > MAX_EARLY_RECEIPTS && !oldest.done) this.earlyReceipts.delete(oldest.value);
  }

  private applyEarlyReceipt(timestamp: number): void {
    const mark = this.earlyReceipts.get(timestamp);
    const id = this.outgoingByTimestamp.get(timestamp);
    const stored = id ? this.history.get(id) : undefined;
    if (!mark || !stored) return;
    this.earlyReceipts.delete(timestamp);
    this.updateLine(stored, mark);
  }

  /** The open conversation's unread lines are seen: unread goes to 0, read receipts go to the sender. */
  private markOpenConversationRead(): void {
    const open = this.openId;
    if (!open) return;
    const unread = this.history.lines(open).filter((stored) => stored.unread);
    if (unread.length === 0) return;
    for (const stored of unread) this.track(this.history.save({ ...stored, unread: false }));
    const peer = peerOf(open);
    if (peer) {
      const timestamps = unread.filter((stored) => stored.line.from === peer).map((stored) => stored.line.timestamp);
      if (timestamps.length > 0) {
        this.track(
          this.client.sendReadReceipt(peer, timestamps).catch((error: unknown) => {
            if (!SecureChatError.is(error) || !QUIET_ERRORS.has(error.code)) this.setStatus('error', describeError(error, { ...this.errorContext(), peer }));
          }),
        );
      }
    }
    this.changed();
  }

  private hideTyping(peer: string): void {
    clearTimeout(this.typingPeers.get(peer));
    this.typingPeers.delete(peer);
  }

  private errorContext(): ErrorContext {
    return { relayUrl: this.relayUrl, username: this.username };
  }

  /** Keeps a background promise until it settles, so that quit can wait for it; reports store failures. */
  private track(promise: Promise<unknown>): void {
    const tracked = promise.catch((error: unknown) => this.setStatus('error', describeError(error, this.errorContext())));
    this.pending.add(tracked);
    void tracked.finally(() => this.pending.delete(tracked));
  }

  private async shutDown(): Promise<void> {
    try {
      this.stopTyping();
      for (const timer of this.typingPeers.values()) clearTimeout(timer);
      this.typingPeers.clear();
      // Waits for typing-stop and receipts already on their way, then stops the client.
      await Promise.allSettled([...this.pending]);
      await this.client.close();
      this.unsubscribeClient();
      await Promise.allSettled([...this.pending]);
      await this.stores.close();
    } finally {
      this.resolveEnded();
    }
  }
}

/** A command that cannot run as asked; its message is the status line. */
class CommandError extends CliError {}

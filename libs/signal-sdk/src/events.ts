import { EventEmitter } from 'node:events';
import type { SecureChatError } from './errors.js';
import type { IdentityChanged, IdentityStatus } from './identity/identity-trust.js';
import type { DeviceId, MessageId } from './ids.js';
import type { GroupUpdated } from './groups/group-service.js';

/** Events of `SecureChatClient` (matrix-js-sdk `CryptoEvent` style: enum and handler map side by side). */
export enum ChatEvent {
  /** A message decrypted; see `IncomingMessage` for when it is acked. */
  Message = 'message',
  /** The connection to the relay changed state; emitted on every change. */
  ConnectionState = 'connectionState',
  /** Every message stored before this connection opened has been emitted. */
  QueueEmpty = 'queueEmpty',
  /** Something failed outside a call the app awaits (an undecryptable message, a lost connection). */
  Error = 'error',
  /**
   * A session with a peer device was replaced to repair it: this install
   * could not decrypt the peer's messages and asked it to start over
   * (`initiator: 'local'`), or the peer asked this install (`'peer'`), which
   * then resends what it sent since the point the peer asked for.
   */
  SessionReset = 'sessionReset',
  /**
   * A peer's identity key changed: seen in a prekey bundle or in a message
   * (emitted before that message). Under `identityPolicy: 'block'` nothing is
   * sent to the peer until the app calls `acceptIdentity` or the user
   * verifies the safety number.
   */
  IdentityChanged = 'identityChanged',
  /**
   * A peer's device says it received (`delivery`) or the user read (`read`)
   * messages this account sent, named by their content timestamps. Never a
   * `message`; acked once the listeners have returned.
   */
  Receipt = 'receipt',
  /**
   * A peer's device says the user started or stopped typing to this
   * account. Only ever delivered live (ephemeral): one sent while this
   * install was offline is gone.
   */
  Typing = 'typing',
  /**
   * The relay accepted a send from the outbox that no `send()` call awaits
   * any more: one queued in an earlier run, or one whose `send()` already
   * rejected (a transient failure while not connected) while it stayed queued.
   */
  Sent = 'sent',
  /** The relay refused such a send for good (or it could not be encrypted); it left the outbox. */
  SendFailed = 'sendFailed',
  /**
   * A group this account is in was created or changed by an admin (on
   * another device of this account too), or this account was removed from
   * one (`removedSelf`). Not emitted for this install's own changes.
   */
  GroupUpdated = 'groupUpdated',
  /**
   * A message showed that messages before it from the same sender device
   * never arrived (docs/architecture.md, "Gap detection"): the relay, or
   * something between, dropped or is holding them. Emitted before that
   * message, once per gap. A reported message that still arrives (it was
   * delayed or reordered) is emitted as a `message` with `filledGap: true`;
   * `missingMessages()` lists what is still missing.
   */
  MessagesMissing = 'messagesMissing',
}

/** What `messagesMissing` reports (and `SecureChatClient.missingMessages()` lists): never any content. */
export interface MessagesMissing {
  /** The sender (canonical username); this account's own for messages another of its devices sent (`outgoing`). */
  readonly sender: string;
  readonly senderDevice: DeviceId;
  /**
   * The conversation the missing messages belong to: `sender`, or for
   * `outgoing` the account they went to; for a group's messages the group id.
   */
  readonly conversation: string;
  /** Set when the missing messages were sent to a group: its id (`SecureChatClient.groups()`), as `conversation`. */
  readonly group?: string;
  /** true: messages this account sent from its device `senderDevice` (their sync copies are missing here). */
  readonly outgoing: boolean;
  /**
   * The missing `IncomingMessage.sequence` numbers, ascending ranges (both
   * ends included). In the event: the gap this message revealed; from
   * `missingMessages()`: every range still missing.
   */
  readonly ranges: readonly { readonly from: number; readonly to: number }[];
  /** How many messages the ranges hold. */
  readonly count: number;
}

/** What `receipt` reports. */
export interface Receipt {
  /** The receipt's sender (canonical username): the recipient of the acknowledged messages. */
  readonly sender: string;
  readonly senderDevice: DeviceId;
  readonly type: 'delivery' | 'read';
  /** The `timestamp`s (`SentMessage.timestamp`) of the acknowledged messages, as the sender listed them (1..100). */
  readonly timestamps: readonly number[];
}

/** What `typing` reports. */
export interface Typing {
  readonly sender: string;
  readonly senderDevice: DeviceId;
  /** true: started typing; false: stopped. */
  readonly typing: boolean;
  /** The sender's clock when it sent this (ms since the epoch). */
  readonly timestamp: number;
}

/** Why a session was reset. */
export enum SessionResetReason {
  /** A message arrived for a session this install does not have (deleted, or lost in a restore). */
  NoSession = 'no-session',
  /** A message did not decrypt with any state of the session (bad MAC, stale or damaged session). */
  InvalidMessage = 'invalid-message',
  /** A PreKey message named a prekey this install no longer has. */
  UnknownPreKey = 'unknown-prekey',
  /** The peer could not decrypt this install's messages and asked it to start over. */
  PeerRequest = 'peer-request',
}

/** What `sessionReset` reports. Never any message content. */
export interface SessionReset {
  /** The peer's canonical username. */
  readonly peer: string;
  readonly device: DeviceId;
  readonly reason: SessionResetReason;
  /** `'local'`: this install asked the peer; `'peer'`: the peer asked this install. */
  readonly initiator: 'local' | 'peer';
}

export enum ConnectionState {
  Disconnected = 'disconnected',
  Connecting = 'connecting',
  Connected = 'connected',
  /** The connection dropped; the client waits (back-off) and connects again. */
  Reconnecting = 'reconnecting',
}

/** A decrypted message. */
export interface IncomingMessage {
  /** The relay's id of the stored envelope. */
  readonly id: MessageId;
  /**
   * The sender's username (canonical, lower case), as the relay
   * authenticated it. For a sync copy (`outgoing: true`), this account's own.
   */
  readonly sender: string;
  readonly senderDevice: DeviceId;
  /**
   * true: a message this account sent from another of its devices (a sync
   * copy), shown on this one as sent; false: a message from `sender`.
   */
  readonly outgoing: boolean;
  /**
   * The other party of the conversation the message belongs to (canonical):
   * the destination of a sync copy, else `sender`.
   */
  readonly conversation: string;
  /** The sender's clock when it sent (ms since the epoch), from inside the encrypted content. */
  readonly timestamp: number;
  /** When the relay stored the message (ms since the epoch). */
  readonly serverTimestamp: number;
  readonly body: Uint8Array;
  /** The body as text when it was sent as text. */
  readonly text?: string;
  /**
   * How the sender's identity key stood when this message was decrypted:
   * `changed` when it came under a key that replaced the one this install
   * had and the change is not accepted (or the message itself brought the
   * change), `verified` when the user verified that key, else `trusted`.
   */
  readonly identity: IdentityStatus;
  /**
   * The message's number in its sender device's sequence to this
   * conversation, for a group message to the group (docs/architecture.md,
   * "Gap detection"): the numbers `messagesMissing` reports. Absent for a
   * sender that does not number its messages (content version 1).
   */
  readonly sequence?: number;
  /**
   * true when this message had been reported missing (`messagesMissing`)
   * and arrived late: the app can take down the gap it showed for it.
   */
  readonly filledGap: boolean;
  /**
   * Set for a message to a group (sent once to every member device, with
   * the sender's key for the group): its id (`SecureChatClient.groups()`)
   * and title as this install knows them. For a group message `outgoing`
   * is true when another device of this account sent it, and
   * `conversation` is the sender.
   */
  readonly group?: { readonly id: string; readonly title: string };
  /**
   * Marks the message handled and tells the relay to delete it. With
   * `autoAck` (the default) the client does this itself once every
   * `message` listener has returned. From then on the message is never
   * emitted again, also when the relay delivers it again because the ack
   * was lost (the SDK acks such a redelivery silently). Idempotent.
   * @throws {SecureChatError} `AckFailed` when the relay could not be told
   *   (it delivers the message again later, and the SDK acks it then).
   */
  ack(): Promise<void>;
}

/** What `sent` reports: an outbox message the relay accepted. */
export interface OutboxSent {
  /** The send's UUID (`SentMessage.id`). */
  readonly id: string;
  /** Canonical username. */
  readonly recipient: string;
  /** The timestamp inside the encrypted content. */
  readonly timestamp: number;
  readonly serverTimestamp: number;
}

/** What `sendFailed` reports: an outbox message that will never be sent. */
export interface OutboxSendFailed {
  readonly id: string;
  readonly recipient: string;
  readonly timestamp: number;
  readonly error: SecureChatError;
}

export interface ChatEventHandlerMap {
  /** May return a promise; with `autoAck` the message is acked after it settles (not if it rejects). */
  [ChatEvent.Message]: (message: IncomingMessage) => void | Promise<void>;
  [ChatEvent.ConnectionState]: (state: ConnectionState, previous: ConnectionState) => void;
  [ChatEvent.QueueEmpty]: () => void;
  [ChatEvent.Error]: (error: SecureChatError) => void;
  [ChatEvent.SessionReset]: (reset: SessionReset) => void;
  [ChatEvent.IdentityChanged]: (change: IdentityChanged) => void;
  [ChatEvent.Sent]: (sent: OutboxSent) => void;
  [ChatEvent.SendFailed]: (failed: OutboxSendFailed) => void;
  [ChatEvent.Receipt]: (receipt: Receipt) => void;
  [ChatEvent.Typing]: (typing: Typing) => void;
  [ChatEvent.GroupUpdated]: (update: GroupUpdated) => void;
  [ChatEvent.MessagesMissing]: (missing: MessagesMissing) => void;
}

type Listener = (...args: never[]) => unknown;
const asNodeListener = (listener: unknown) => listener as (...args: unknown[]) => void;

/**
 * An EventEmitter whose event names and listener signatures are checked
 * (matrix-js-sdk `TypedEventEmitter`). Unlike Node's, emitting `error` with no
 * listener does not throw: a library must not crash its host for a report.
 */
export class TypedEventEmitter<Events extends string, Handlers extends { [E in Events]: Listener }> {
  private readonly emitter = new EventEmitter();

  on<E extends Events>(event: E, listener: Handlers[E]): this {
    this.emitter.on(event, asNodeListener(listener));
    return this;
  }

  once<E extends Events>(event: E, listener: Handlers[E]): this {
    this.emitter.once(event, asNodeListener(listener));
    return this;
  }

  off<E extends Events>(event: E, listener: Handlers[E]): this {
    this.emitter.off(event, asNodeListener(listener));
    return this;
  }

  removeAllListeners(event?: Events): this {
    this.emitter.removeAllListeners(event);
    return this;
  }

  listenerCount(event: Events): number {
    return this.emitter.listenerCount(event);
  }

  listeners<E extends Events>(event: E): Handlers[E][] {
    return this.emitter.listeners(event) as Handlers[E][];
  }

  protected emit<E extends Events>(event: E, ...args: Parameters<Handlers[E]>): boolean {
    if (this.emitter.listenerCount(event) === 0) return false;
    return this.emitter.emit(event, ...args);
  }
}

// What the chat screen shows and what it can ask for: the seam between the
// session (src/chat/chat-session.ts, on the SDK) and the Ink screen (src/ui).
// The screen reads `view()` and calls the controller; it never touches the SDK.
import type { ConnectionState } from '@chat/signal-sdk';

/** `direct:<username>` or `group:<group id>`. */
export type ConversationId = `direct:${string}` | `group:${string}`;

export const directConversation = (username: string): ConversationId => `direct:${username}`;
export const groupConversation = (groupId: string): ConversationId => `group:${groupId}`;

/** How far an outgoing message got; shown after it as a mark. */
export enum DeliveryMark {
  /** In the SDK's outbox, not yet accepted by the relay. */
  Sending = 'sending',
  /** The relay stored it. */
  Sent = 'sent',
  /** A recipient device decrypted it (delivery receipt). */
  Delivered = 'delivered',
  /** The recipient opened the conversation (read receipt). */
  Read = 'read',
  /** It will never be sent (the reason is shown beside it). */
  Failed = 'failed',
}

export enum LineKind {
  Incoming = 'incoming',
  Outgoing = 'outgoing',
  /** What the app says: command answers kept in the conversation (a safety number, a device list). */
  Notice = 'notice',
  /** Something the person must see: an identity change, a message that failed. */
  Warning = 'warning',
}

export interface ChatLine {
  /** Stable across updates (a message's id, or a notice's own). */
  id: string;
  kind: LineKind;
  /** Incoming: the sender's username; outgoing: this account's; notices: empty. */
  from: string;
  text: string;
  /** ms since the epoch: the sender's timestamp for messages. */
  timestamp: number;
  /** Outgoing only. */
  mark?: DeliveryMark;
}

export interface ConversationSummary {
  id: ConversationId;
  kind: 'direct' | 'group';
  /** The peer's username, or the group's title. */
  title: string;
  /** Incoming messages not yet seen in the open conversation. */
  unread: number;
  /** ms since the epoch of the newest line. */
  lastActivity: number;
}

export interface ChatStatus {
  level: 'info' | 'error';
  text: string;
}

export interface ChatView {
  username: string;
  deviceId: number;
  connection: ConnectionState;
  /** Newest activity first. */
  conversations: ConversationSummary[];
  open: ConversationId | null;
  /** The open conversation's lines, oldest first (the newest few hundred). */
  lines: ChatLine[];
  /** Usernames typing in the open conversation now. */
  typing: string[];
  /** The answer to the last command, or the last error, until the next one. */
  status: ChatStatus | null;
}

export interface ChatController {
  view(): ChatView;
  /** Calls `listener` after every change of the view; returns the unsubscribe. */
  subscribe(listener: () => void): () => void;
  /** Opens a conversation: its unread messages are marked read (read receipts go to their senders). */
  openConversation(id: ConversationId): void;
  /**
   * A line the person typed: a message to the open conversation, or a
   * `/command` (`/help` lists them). Never rejects: failures become `status`.
   */
  submit(line: string): Promise<void>;
  /** The input line changed (drives typing indicators). */
  draftChanged(text: string): void;
  /** Closes the client and the store. */
  quit(): Promise<void>;
  /** Resolves when the session ended (`/quit`, `quit()`, or this device was unlinked). */
  readonly ended: Promise<void>;
}

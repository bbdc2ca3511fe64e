// The chat history: every line and conversation, in memory for the screen
// and in the encrypted store (`appRecords`) so that it outlives the process.
// Never in a plain file: the lines are the plaintext the whole system exists
// to protect.
import type { AppRecordCollection } from '@chat/signal-sdk/sqlite';
import type { ChatLine, ConversationId } from './chat-view.js';

/** What the history needs of the store: `SqliteStores.appRecords`. */
export interface AppRecordSource {
  appRecords(name: string): AppRecordCollection;
}

/** One line as kept. */
export interface StoredLine {
  conversation: ConversationId;
  line: ChatLine;
  /** Outgoing messages: the timestamp inside the sent content, which receipts name. */
  contentTimestamp?: number;
  /** Incoming messages not yet shown in the open conversation. */
  unread?: boolean;
}

export interface StoredConversation {
  id: ConversationId;
  kind: 'direct' | 'group';
  /** The peer's username or the group's title. */
  title: string;
  /** When it was first opened or first had a line. */
  createdAt: number;
}

/** Lines kept in the store; older ones are dropped when the history loads. */
export const DEFAULT_HISTORY_LIMIT = 10_000;

const encode = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
const decode = <T>(bytes: Uint8Array) => JSON.parse(new TextDecoder().decode(bytes)) as T;

export class ChatHistory {
  private readonly lineRecords: AppRecordCollection;
  private readonly conversationRecords: AppRecordCollection;
  readonly conversations = new Map<ConversationId, StoredConversation>();
  /** Per conversation, oldest first. */
  private readonly linesOf = new Map<ConversationId, StoredLine[]>();
  private readonly byId = new Map<string, StoredLine>();

  private constructor(source: AppRecordSource) {
    this.lineRecords = source.appRecords('history');
    this.conversationRecords = source.appRecords('conversations');
  }

  /** Reads the stored history, keeping the newest `limit` lines. */
  static async load(source: AppRecordSource, limit = DEFAULT_HISTORY_LIMIT): Promise<ChatHistory> {
    const history = new ChatHistory(source);
    await history.lineRecords.keepNewest(limit);
    for (const { value } of await history.conversationRecords.list()) {
      const conversation = decode<StoredConversation>(value);
      history.conversations.set(conversation.id, conversation);
    }
    for (const { value } of await history.lineRecords.list()) {
      history.remember(decode<StoredLine>(value));
    }
    return history;
  }

  lines(conversation: ConversationId): readonly StoredLine[] {
    return this.linesOf.get(conversation) ?? [];
  }

  get(lineId: string): StoredLine | undefined {
    return this.byId.get(lineId);
  }

  all(): IterableIterator<StoredLine> {
    return this.byId.values();
  }

  unread(conversation: ConversationId): number {
    return this.lines(conversation).filter((stored) => stored.unread).length;
  }

  lastActivity(conversation: ConversationId): number {
    const lines = this.lines(conversation);
    // An empty conversation (just opened) counts from when it was opened.
    if (lines.length === 0) return this.conversations.get(conversation)?.createdAt ?? 0;
    return Math.max(...lines.slice(-50).map((stored) => stored.line.timestamp));
  }

  /** Adds the conversation if new, or renames it (a group's new title). */
  async saveConversation(conversation: StoredConversation): Promise<void> {
    const known = this.conversations.get(conversation.id);
    if (known && known.title === conversation.title) return;
    const kept = known ? { ...known, title: conversation.title } : conversation;
    this.conversations.set(kept.id, kept);
    await this.conversationRecords.put(kept.id, encode(kept));
  }

  /** Adds a line, or replaces the line of the same id in place. */
  async save(stored: StoredLine): Promise<void> {
    this.remember(stored);
    await this.lineRecords.put(stored.line.id, encode(stored));
  }

  private remember(stored: StoredLine): void {
    const previous = this.byId.get(stored.line.id);
    this.byId.set(stored.line.id, stored);
    const lines = this.linesOf.get(stored.conversation) ?? [];
    this.linesOf.set(stored.conversation, lines);
    const at = previous ? lines.indexOf(previous) : -1;
    if (at >= 0) {
      lines[at] = stored;
      return;
    }
    // Arrival order: what this screen saw happen, whatever the senders' clocks say.
    lines.push(stored);
  }
}

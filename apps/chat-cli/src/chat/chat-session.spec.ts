import { afterEach, describe, expect, it, jest } from '@jest/globals';
import {
  ChatEvent,
  ConnectionState,
  IdentityStatus,
  SecureChatError,
  SecureChatErrorCode,
  TypedEventEmitter,
  type ChatEventHandlerMap,
  type IncomingMessage,
  type MessageId,
  type SentMessage,
} from '@chat/signal-sdk';
import type { AppRecordCollection } from '@chat/signal-sdk/sqlite';
import { ErrorCode } from '@chat/protocol';
import { ChatSession, type ChatClient } from './chat-session.js';
import { DeliveryMark, LineKind, directConversation, groupConversation } from './chat-view.js';

/** The SDK client as the session sees it: events the test fires, calls it records. */
class FakeClient extends TypedEventEmitter<ChatEvent, ChatEventHandlerMap> {
  connectionState = ConnectionState.Connecting;
  readonly sends: Array<{ to: string; text: string; id: string; settle: { resolve(sent: SentMessage): void; reject(error: unknown): void } }> = [];
  readonly readReceipts: Array<{ to: string; timestamps: number[] }> = [];
  readonly typing: Array<{ to: string; typing: boolean }> = [];
  closed = 0;
  private contentTimestamp = 5_000;

  fire<E extends ChatEvent>(event: E, ...args: Parameters<ChatEventHandlerMap[E]>): unknown[] {
    // Returns what the listeners returned, so that a test can await the message handler (as the SDK does before acking).
    return this.listeners(event).map((listener) => (listener as (...a: unknown[]) => unknown)(...args));
  }

  send = (to: string, text: string | Uint8Array, options: { id?: string } = {}): Promise<SentMessage> =>
    new Promise((resolve, reject) => this.sends.push({ to, text: String(text), id: options.id!, settle: { resolve, reject } }));

  /** The relay accepted the n-th send; returns its content timestamp. */
  accept(index: number): number {
    const send = this.sends[index]!;
    const timestamp = ++this.contentTimestamp;
    send.settle.resolve({ id: send.id, timestamp, serverTimestamp: timestamp + 1, devices: [], syncDevices: [] } as unknown as SentMessage);
    return timestamp;
  }

  sendReadReceipt = async (to: string, timestamps: number[]) => {
    this.readReceipts.push({ to, timestamps });
  };
  sendTyping = async (to: string, typing: boolean) => {
    this.typing.push({ to, typing });
  };
  safetyNumber = async () => ({ displayable: '1'.repeat(30) + '2'.repeat(30), scannable: new Uint8Array() });
  verifySafetyNumber = jest.fn(async (_peer: string, digits: string | Uint8Array) => {
    if (digits !== '1'.repeat(30) + '2'.repeat(30)) throw new SecureChatError(SecureChatErrorCode.SafetyNumberMismatch, 'mismatch');
  });
  acceptIdentity = jest.fn(async (_peer: string) => undefined);
  listDevices = async () => [];
  approveLink = async () => undefined;
  unlinkDevice = async () => undefined;
  groups = async () => [{ id: 'g1', title: 'Team', revision: 1, members: ['alice', 'bob'], admins: ['alice'], member: true }];
  createGroup = async () => {
    throw new Error('not used');
  };
  addGroupMembers = this.createGroup;
  removeGroupMember = this.createGroup;
  sendGroupMessage = async () => ({ id: 'x', timestamp: 1, serverTimestamp: 2, recipientDevices: 1, sealed: true, ownDevices: 0 });
  close = async () => {
    this.closed++;
  };
}

/** `SqliteStores.appRecords` in memory, in first-written order as the real one. */
class MemoryAppRecords {
  readonly collections = new Map<string, Map<string, Uint8Array>>();
  closed = 0;

  appRecords(name: string): AppRecordCollection {
    const records = this.collections.get(name) ?? new Map<string, Uint8Array>();
    this.collections.set(name, records);
    return {
      get: async (key) => records.get(key) ?? null,
      put: async (key, value) => void records.set(key, value),
      delete: async (key) => void records.delete(key),
      list: async () => [...records].map(([key, value]) => ({ key, value })),
      keepNewest: async (count) => {
        for (const key of [...records.keys()].slice(0, Math.max(0, records.size - count))) records.delete(key);
      },
    };
  }

  async close() {
    this.closed++;
  }
}

let messageCounter = 0;
function incoming(sender: string, text: string, timestamp: number, extra: Partial<IncomingMessage> = {}): IncomingMessage {
  return {
    id: `m${++messageCounter}` as MessageId,
    sender,
    senderDevice: 1,
    outgoing: false,
    conversation: sender,
    timestamp,
    serverTimestamp: timestamp + 1,
    body: new TextEncoder().encode(text),
    text,
    identity: IdentityStatus.Trusted,
    ack: async () => undefined,
    ...extra,
  } as IncomingMessage;
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

async function openSession(overrides: { client?: FakeClient; stores?: MemoryAppRecords; now?: () => number; groupsEnabled?: boolean } = {}) {
  const client = overrides.client ?? new FakeClient();
  const stores = overrides.stores ?? new MemoryAppRecords();
  const session = await ChatSession.open({
    client: client as unknown as ChatClient,
    stores,
    username: 'alice',
    deviceId: 1,
    relayUrl: 'http://relay.test',
    now: overrides.now,
    groupsEnabled: overrides.groupsEnabled,
  });
  return { client, stores, session };
}

const bob = directConversation('bob');

describe('ChatSession', () => {
  afterEach(() => {
    jest.useRealTimers();
  });

  it('shows a typed message as sending at once, then sent, delivered and read as the SDK reports it', async () => {
    const { client, session } = await openSession();
    session.openConversation(bob);
    await session.submit('hello bob');
    expect(session.view().lines).toEqual([expect.objectContaining({ kind: LineKind.Outgoing, from: 'alice', text: 'hello bob', mark: DeliveryMark.Sending })]);
    expect(client.sends).toEqual([expect.objectContaining({ to: 'bob', text: 'hello bob' })]);

    const timestamp = client.accept(0);
    await flush();
    expect(session.view().lines[0]!.mark).toBe(DeliveryMark.Sent);

    client.fire(ChatEvent.Receipt, { sender: 'bob', senderDevice: 1 as never, type: 'delivery', timestamps: [timestamp] });
    expect(session.view().lines[0]!.mark).toBe(DeliveryMark.Delivered);
    client.fire(ChatEvent.Receipt, { sender: 'bob', senderDevice: 1 as never, type: 'read', timestamps: [timestamp] });
    expect(session.view().lines[0]!.mark).toBe(DeliveryMark.Read);
    // A late delivery receipt does not move the mark back.
    client.fire(ChatEvent.Receipt, { sender: 'bob', senderDevice: 1 as never, type: 'delivery', timestamps: [timestamp] });
    expect(session.view().lines[0]!.mark).toBe(DeliveryMark.Read);
  });

  it('marks a message sent in an earlier run when the outbox reports it with `sent`', async () => {
    const stores = new MemoryAppRecords();
    const first = await openSession({ stores });
    first.session.openConversation(bob);
    await first.session.submit('queued while offline');
    const id = first.client.sends[0]!.id;
    first.client.sends[0]!.settle.reject(new SecureChatError(SecureChatErrorCode.Network, 'down'));
    await first.session.quit();

    const { client, session } = await openSession({ stores });
    session.openConversation(bob);
    expect(session.view().lines[0]!.mark).toBe(DeliveryMark.Sending);
    client.fire(ChatEvent.Sent, { id, recipient: 'bob', timestamp: 77, serverTimestamp: 78 });
    expect(session.view().lines[0]!.mark).toBe(DeliveryMark.Sent);
    client.fire(ChatEvent.Receipt, { sender: 'bob', senderDevice: 1 as never, type: 'read', timestamps: [77] });
    expect(session.view().lines[0]!.mark).toBe(DeliveryMark.Read);
  });

  it('applies a receipt that arrives before the send it names was confirmed', async () => {
    const { client, session } = await openSession();
    session.openConversation(bob);
    await session.submit('fast');
    client.fire(ChatEvent.Receipt, { sender: 'bob', senderDevice: 1 as never, type: 'delivery', timestamps: [5_001] });
    client.accept(0);
    await flush();
    expect(session.view().lines[0]!.mark).toBe(DeliveryMark.Delivered);
  });

  it('marks a refused message failed, says why in the conversation and the status, and never rejects', async () => {
    const { client, session } = await openSession();
    session.openConversation(directConversation('nobody'));
    await expect(session.submit('hi')).resolves.toBeUndefined();
    client.sends[0]!.settle.reject(
      new SecureChatError(SecureChatErrorCode.RelayRejected, 'no', { relayCode: ErrorCode.UnknownRecipient }),
    );
    await flush();
    const view = session.view();
    expect(view.lines[0]!.mark).toBe(DeliveryMark.Failed);
    expect(view.lines[1]).toEqual(expect.objectContaining({ kind: LineKind.Warning, text: expect.stringContaining('there is no user named nobody') }));
    expect(view.status).toEqual({ level: 'error', text: expect.stringContaining('there is no user named nobody') });
  });

  it('counts unread messages and, on open, clears the count and sends read receipts to the sender', async () => {
    const { client, session } = await openSession();
    await client.fire(ChatEvent.Message, incoming('bob', 'one', 100))[0];
    await client.fire(ChatEvent.Message, incoming('bob', 'two', 101))[0];
    expect(session.view().conversations).toEqual([expect.objectContaining({ id: bob, title: 'bob', unread: 2 })]);
    expect(client.readReceipts).toEqual([]);

    session.openConversation(bob);
    expect(session.view().conversations[0]!.unread).toBe(0);
    expect(session.view().lines.map((line) => `${line.from}: ${line.text}`)).toEqual(['bob: one', 'bob: two']);
    await flush();
    expect(client.readReceipts).toEqual([{ to: 'bob', timestamps: [100, 101] }]);

    // A message arriving in the open conversation is read at once.
    await client.fire(ChatEvent.Message, incoming('bob', 'three', 102))[0];
    await flush();
    expect(session.view().conversations[0]!.unread).toBe(0);
    expect(client.readReceipts).toEqual([
      { to: 'bob', timestamps: [100, 101] },
      { to: 'bob', timestamps: [102] },
    ]);
  });

  it('keeps messages in the store before the message listener returns, and shows them after a restart', async () => {
    const stores = new MemoryAppRecords();
    const first = await openSession({ stores });
    await first.client.fire(ChatEvent.Message, incoming('bob', 'kept', 100))[0];
    expect(stores.collections.get('history')?.size).toBe(1);
    await first.session.quit();

    const { session } = await openSession({ stores });
    expect(session.view().conversations).toEqual([expect.objectContaining({ id: bob, unread: 1 })]);
    session.openConversation(bob);
    expect(session.view().lines).toEqual([expect.objectContaining({ kind: LineKind.Incoming, from: 'bob', text: 'kept' })]);
  });

  it('lists conversations newest first and puts group messages in their group', async () => {
    const { client, session } = await openSession();
    await client.fire(ChatEvent.Message, incoming('bob', 'direct', 100))[0];
    await client.fire(ChatEvent.Message, incoming('carol', 'to the team', 200, { group: { id: 'g1', title: 'Team' } }))[0];
    expect(session.view().conversations.map((c) => [c.id, c.title, c.kind])).toEqual([
      [groupConversation('g1'), 'Team', 'group'],
      [bob, 'bob', 'direct'],
    ]);
  });

  it('shows a sync copy from another device of this account as an outgoing, sent line', async () => {
    const { client, session } = await openSession();
    await client.fire(ChatEvent.Message, incoming('alice', 'from my laptop', 100, { outgoing: true, conversation: 'bob' }))[0];
    session.openConversation(bob);
    expect(session.view().lines).toEqual([expect.objectContaining({ kind: LineKind.Outgoing, from: 'alice', mark: DeliveryMark.Sent })]);
    expect(session.view().conversations[0]!.unread).toBe(0);
  });

  it('sends typing while the draft has text, at most once per refresh interval, and stops when it empties or is sent', async () => {
    let now = 1_000;
    const { client, session } = await openSession({ now: () => now });
    session.openConversation(bob);
    session.draftChanged('h');
    session.draftChanged('he');
    now += 3_000;
    session.draftChanged('hel');
    session.draftChanged('');
    session.draftChanged('/saf');
    session.draftChanged('x');
    await session.submit('x');
    await flush();
    expect(client.typing).toEqual([
      { to: 'bob', typing: true },
      { to: 'bob', typing: true },
      { to: 'bob', typing: false },
      { to: 'bob', typing: true },
      { to: 'bob', typing: false },
    ]);
  });

  it('shows who is typing in the open conversation until they stop, send, or the indicator times out', async () => {
    jest.useFakeTimers({ doNotFake: ['nextTick', 'queueMicrotask', 'setImmediate'] });
    const { client, session } = await openSession();
    session.openConversation(bob);
    const typing = (on: boolean) => client.fire(ChatEvent.Typing, { sender: 'bob', senderDevice: 1 as never, typing: on, timestamp: 1 });
    typing(true);
    expect(session.view().typing).toEqual(['bob']);
    typing(false);
    expect(session.view().typing).toEqual([]);
    typing(true);
    await client.fire(ChatEvent.Message, incoming('bob', 'done typing', 100))[0];
    expect(session.view().typing).toEqual([]);
    typing(true);
    jest.advanceTimersByTime(15_000);
    expect(session.view().typing).toEqual([]);
  });

  it('warns in the conversation when a peer identity changes, and shows the same when a send is blocked', async () => {
    const { client, session } = await openSession();
    client.fire(ChatEvent.IdentityChanged, {
      username: 'bob',
      previousKey: new Uint8Array(33),
      newKey: new Uint8Array(33),
      wasVerified: false,
      status: IdentityStatus.Changed,
    });
    session.openConversation(bob);
    const warning = "bob's safety number changed. Compare it with /safety and /verify, or trust it with /accept.";
    expect(session.view().lines).toEqual([expect.objectContaining({ kind: LineKind.Warning, text: warning })]);

    await session.submit('are you there?');
    client.sends[0]!.settle.reject(new SecureChatError(SecureChatErrorCode.IdentityChanged, 'blocked'));
    await flush();
    expect(session.view().status).toEqual({ level: 'error', text: expect.stringContaining(warning) });

    await session.submit('/accept');
    expect(client.acceptIdentity).toHaveBeenCalledWith('bob');
  });

  it('runs /safety and /verify for the open direct conversation', async () => {
    const { client, session } = await openSession();
    session.openConversation(bob);
    await session.submit('/safety');
    expect(session.view().lines.at(-1)!.text).toBe(`Safety number with bob: ${'11111 '.repeat(6)}${'22222 '.repeat(6)}`.trimEnd());
    await session.submit(`/verify ${'1'.repeat(30)} ${'2'.repeat(30)}`);
    expect(client.verifySafetyNumber).toHaveBeenCalledWith('bob', '1'.repeat(30) + '2'.repeat(30));
    expect(session.view().lines.at(-1)!.text).toBe('bob is verified');
    await session.submit(`/verify ${'3'.repeat(60)}`);
    expect(session.view().status).toEqual({ level: 'error', text: expect.stringContaining('the safety number does not match') });
  });

  it('answers a command given bad arguments, or one that needs a conversation, with an error status', async () => {
    const { session } = await openSession();
    await session.submit('/verify 123');
    expect(session.view().status).toEqual({ level: 'error', text: 'usage: /verify <60 digits>' });
    await session.submit('/safety');
    expect(session.view().status?.text).toContain('/open <username> first');
    await session.submit('hello?');
    expect(session.view().status?.text).toContain('open a conversation first');
  });

  it('opens a group by its title, and says how to enable groups without a trust root', async () => {
    const { session } = await openSession({ groupsEnabled: true });
    await session.submit('/open team');
    expect(session.view().open).toBe(groupConversation('g1'));

    const without = await openSession({ groupsEnabled: false });
    await without.session.submit('/group create crew bob');
    expect(without.session.view().status?.text).toContain('--trust-root');
  });

  it('follows the connection state', async () => {
    const { client, session } = await openSession();
    expect(session.view().connection).toBe(ConnectionState.Connecting);
    client.fire(ChatEvent.ConnectionState, ConnectionState.Reconnecting, ConnectionState.Connected);
    expect(session.view().connection).toBe(ConnectionState.Reconnecting);
  });

  it('keeps the same view object until something changes (for useSyncExternalStore)', async () => {
    const { client, session } = await openSession();
    const listener = jest.fn();
    session.subscribe(listener);
    expect(session.view()).toBe(session.view());
    const before = session.view();
    client.fire(ChatEvent.ConnectionState, ConnectionState.Connected, ConnectionState.Connecting);
    expect(listener).toHaveBeenCalled();
    expect(session.view()).not.toBe(before);
  });

  it('ends on /quit, closing the client and the store', async () => {
    const { client, stores, session } = await openSession();
    await session.submit('/quit');
    await session.ended;
    expect(client.closed).toBe(1);
    expect(stores.closed).toBe(1);
    expect(session.endReason).toBeNull();
  });

  it('ends on its own, with the reason, when this device is unlinked', async () => {
    const { client, stores, session } = await openSession();
    client.fire(ChatEvent.Error, new SecureChatError(SecureChatErrorCode.DeviceUnlinked, 'unlinked'));
    await session.ended;
    expect(session.endReason).toContain('this device was unlinked');
    expect(stores.closed).toBe(1);
  });
});

import { describe, expect, it } from '@jest/globals';
import { ProtocolAddress, SessionRecord } from '@signalapp/libsignal-client';
import { ClientFrameType, type ClientFrame } from '@chat/protocol';
import {
  ChatEvent,
  ConnectionState,
  HttpRelayTransport,
  SecureChatClient,
  SecureChatErrorCode,
  type Receipt,
  type RelaySocket,
  type RelayTransport,
  type SecureChatClientOptions,
  type SecureChatError,
  type SecureChatStores,
  type SessionReset,
  type Typing,
} from '@chat/signal-sdk';
import { MessageCollector, createMemoryStores, waitForEvent } from '@chat/signal-sdk/testing';
import { useSdkRelay } from './support/sdk-relay.js';
import { DEFAULT_TEST_PASSWORD, uniqueUsername } from './support/test-relay.js';

// Receipts, typing and receive dedupe end to end: SDK clients on the real
// relay (AppModule, real database, HTTP and WebSocket). docs/protocol.md,
// "Receipts and typing"; docs/architecture.md, "Dedupe and acks".

/** What one client's app saw. */
interface Seen {
  inbox: MessageCollector;
  receipts: Receipt[];
  typing: Typing[];
  resets: SessionReset[];
  errors: SecureChatError[];
}

function watch(client: SecureChatClient): Seen {
  const seen: Seen = { inbox: new MessageCollector(client), receipts: [], typing: [], resets: [], errors: [] };
  client.on(ChatEvent.Receipt, (receipt) => void seen.receipts.push(receipt));
  client.on(ChatEvent.Typing, (typing) => void seen.typing.push(typing));
  client.on(ChatEvent.SessionReset, (reset) => void seen.resets.push(reset));
  client.on(ChatEvent.Error, (error) => void seen.errors.push(error));
  return seen;
}

async function waitUntil(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * The SDK's own HTTP + WebSocket transport, except that while `dropAcks` is
 * set an ack frame (or HTTP ack) is swallowed as a network would lose it,
 * and `closeSocket` closes the open socket as a dropped connection would.
 */
function ackDroppingTransport(relayUrl: string) {
  const inner = new HttpRelayTransport(relayUrl);
  const control = { dropAcks: false, droppedAcks: [] as string[], socket: null as RelaySocket | null };
  const transport = new Proxy(inner, {
    get(target, property, receiver) {
      if (property === 'openSocket') {
        const openSocket: RelayTransport['openSocket'] = async (token, listener) => {
          const socket = await target.openSocket(token, listener);
          control.socket = socket;
          return {
            get isOpen() {
              return socket.isOpen;
            },
            send(frame: ClientFrame) {
              if (control.dropAcks && frame.type === ClientFrameType.Ack) {
                control.droppedAcks.push(frame.id);
                return;
              }
              socket.send(frame);
            },
            close: (code?: number, reason?: string) => socket.close(code, reason),
          };
        };
        return openSocket;
      }
      if (property === 'ackMessage') {
        const ackMessage: RelayTransport['ackMessage'] = async (token, id) => {
          if (control.dropAcks) {
            control.droppedAcks.push(id);
            return;
          }
          return target.ackMessage(token, id);
        };
        return ackMessage;
      }
      const value: unknown = Reflect.get(target, property, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { transport, control };
}

/**
 * A content record as docs/protocol.md lays it out ("Inside the ciphertext"),
 * built by hand as a modified client would: version 1, kind, u64 timestamp,
 * u32 body length, body, 0x80, zeros to a multiple of 160.
 */
function contentRecord(kind: number, timestamp: number, body: Uint8Array): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(Math.ceil((14 + body.length + 1) / 160) * 160);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, 1);
  view.setUint8(1, kind);
  view.setBigUint64(2, BigInt(timestamp));
  view.setUint32(10, body.length);
  bytes.set(body, 14);
  bytes[14 + body.length] = 0x80;
  return bytes;
}

const utf8 = (text: string) => new TextEncoder().encode(text);

/** The send path the SDK uses for receipts and typing, reached from a test to send what the public API never would. */
type TransmitContent = (to: string, plaintext: Uint8Array<ArrayBuffer>, options?: { ephemeral?: boolean; sync?: boolean }) => Promise<unknown>;
const transmitContentOf = (client: SecureChatClient) =>
  (client as unknown as { transmitContent: TransmitContent }).transmitContent.bind(client) as TransmitContent;

describe('receipts, typing and receive dedupe through the real relay', () => {
  const fixture = useSdkRelay('receipts-typing-e2e');
  const { clients } = fixture;

  async function registered(prefix: string, options: Partial<SecureChatClientOptions> = {}, stores: SecureChatStores = createMemoryStores()) {
    const client = SecureChatClient.create({ relayUrl: fixture.relay.baseUrl, stores, backOff: { initialDelayMs: 50, maxDelayMs: 200 }, ...options });
    clients.push(client);
    const username = uniqueUsername(prefix);
    await client.register(username, DEFAULT_TEST_PASSWORD);
    return { client, stores, username, seen: watch(client) };
  }

  type User = Awaited<ReturnType<typeof registered>>;

  /** Rows of this message id in the relay's queue. */
  async function storedCopies(id: string): Promise<number> {
    const [row] = await fixture.relay.sql<{ count: bigint | number }>('SELECT count(*) AS count FROM messages WHERE id = $1::uuid', id);
    return Number(row!.count);
  }

  /** Resolves with the next message of `to` whose text is `text`. */
  async function nextText(to: User, text: string) {
    for (;;) {
      const message = await to.seen.inbox.next(10_000);
      if (message.text === text) return message;
    }
  }

  it('sends a delivery receipt once the app has a message, and a read receipt when asked; neither shows as a message', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    await Promise.all([alice.client.connect(), bob.client.connect()]);

    const sent = await alice.client.send(bob.username, 'hello bob');
    const received = await nextText(bob, 'hello bob');
    expect(received).toMatchObject({ sender: alice.username, outgoing: false, conversation: alice.username, timestamp: sent.timestamp });
    await waitUntil(() => alice.seen.receipts.length > 0, 'the delivery receipt');
    expect(alice.seen.receipts).toEqual([{ sender: bob.username, senderDevice: 1, type: 'delivery', timestamps: [sent.timestamp] }]);

    await bob.client.sendReadReceipt(alice.username, [received.timestamp]);
    await waitUntil(() => alice.seen.receipts.length > 1, 'the read receipt');
    expect(alice.seen.receipts[1]).toEqual({ sender: bob.username, senderDevice: 1, type: 'read', timestamps: [sent.timestamp] });

    // Order per sender holds: once bob's later message is in, nothing else from bob is on its way.
    await bob.client.send(alice.username, 'bye');
    await nextText(alice, 'bye');
    expect(alice.seen.inbox.received.map((m) => m.text)).toEqual(['bye']);
    expect(alice.seen.receipts.map((r) => r.type)).toEqual(['delivery', 'read']);
    // alice acknowledged 'bye' and nothing else: a receipt is never answered with a receipt (any
    // such would have been sent, and so arrived, before the one for 'bye').
    const bye = alice.seen.inbox.received[0]!;
    await waitUntil(() => bob.seen.receipts.some((r) => r.timestamps.includes(bye.timestamp)), "alice's delivery receipt of 'bye'");
    expect(bob.seen.receipts).toEqual([{ sender: alice.username, senderDevice: 1, type: 'delivery', timestamps: [bye.timestamp] }]);
    expect([...alice.seen.errors, ...bob.seen.errors]).toEqual([]);
  });

  it('acknowledges a backlog fetched on connect with delivery receipts naming every message once', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    await alice.client.connect();
    const timestamps: number[] = [];
    for (const text of ['one', 'two', 'three']) timestamps.push((await alice.client.send(bob.username, text)).timestamp);

    await bob.client.connect();
    await nextText(bob, 'three');
    const acknowledged = () => alice.seen.receipts.flatMap((r) => r.timestamps);
    await waitUntil(() => acknowledged().length >= 3, 'receipts for the three messages');
    expect([...acknowledged()].sort((a, b) => a - b)).toEqual(timestamps);
    expect(alice.seen.receipts.every((r) => r.type === 'delivery' && r.sender === bob.username)).toBe(true);
    expect([...alice.seen.errors, ...bob.seen.errors]).toEqual([]);
  });

  it('sends no delivery receipt with deliveryReceipts: false', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob', { deliveryReceipts: false });
    await Promise.all([alice.client.connect(), bob.client.connect()]);

    const sent = await alice.client.send(bob.username, 'no receipt please');
    await nextText(bob, 'no receipt please');
    await bob.client.sendReadReceipt(alice.username, [sent.timestamp]);
    await bob.client.send(alice.username, 'after the read receipt');
    await nextText(alice, 'after the read receipt');
    expect(alice.seen.receipts).toEqual([{ sender: bob.username, senderDevice: 1, type: 'read', timestamps: [sent.timestamp] }]);
  });

  it('delivers typing to a connected client, as typing events and never messages', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    await expect(alice.client.sendTyping(bob.username, true)).rejects.toMatchObject({ code: SecureChatErrorCode.InvalidState });
    await Promise.all([alice.client.connect(), bob.client.connect()]);

    await alice.client.sendTyping(bob.username, true);
    await waitUntil(() => bob.seen.typing.length === 1, 'typing started');
    await alice.client.sendTyping(bob.username, false);
    await waitUntil(() => bob.seen.typing.length === 2, 'typing stopped');

    expect(bob.seen.typing.map(({ sender, senderDevice, typing }) => ({ sender, senderDevice, typing }))).toEqual([
      { sender: alice.username, senderDevice: 1, typing: true },
      { sender: alice.username, senderDevice: 1, typing: false },
    ]);
    expect(bob.seen.typing[0]!.timestamp).toBeLessThan(bob.seen.typing[1]!.timestamp);
    expect(bob.seen.inbox.received).toEqual([]);
    expect([...alice.seen.errors, ...bob.seen.errors]).toEqual([]);
  });

  it('does not deliver typing sent while the recipient was offline; a later message still arrives', async () => {
    const alice = await registered('alice');
    const bob = await registered('bob');
    await alice.client.connect();

    await alice.client.sendTyping(bob.username, true);
    await alice.client.send(bob.username, 'sent after typing');
    const queueEmpty = waitForEvent(bob.client, ChatEvent.QueueEmpty, 10_000);
    await bob.client.connect();
    await nextText(bob, 'sent after typing');
    await queueEmpty;

    expect(bob.seen.typing).toEqual([]);
    expect(bob.seen.inbox.received.map((m) => m.text)).toEqual(['sent after typing']);
    expect([...alice.seen.errors, ...bob.seen.errors]).toEqual([]);
  });

  it('does not show a redelivered envelope twice: its id was recorded when it was decrypted, the redelivery is only acked', async () => {
    const alice = await registered('alice');
    const lossy = ackDroppingTransport(fixture.relay.baseUrl);
    const bob = await registered('bob', { transport: lossy.transport });
    await Promise.all([alice.client.connect(), bob.client.connect()]);
    await alice.client.send(bob.username, 'open');
    await nextText(bob, 'open');

    lossy.control.dropAcks = true;
    await alice.client.send(bob.username, 'only once');
    const message = await nextText(bob, 'only once');
    await waitUntil(() => lossy.control.droppedAcks.includes(message.id), 'the ack to be lost');
    lossy.control.dropAcks = false;
    expect(await storedCopies(message.id)).toBe(1);
    await expect(bob.stores.metadata.hasProcessedEnvelope(message.id)).resolves.toBe(true);
    // Without the recorded id, libsignal would call the redelivery a duplicate: gone with the session,
    // only the id can tell (else bob would find no session and ask alice to start over).
    await bob.stores.session.saveSession(ProtocolAddress.new(alice.username, 1), SessionRecord.deserialize(new Uint8Array(0)));

    // The connection drops; the relay sends the unacked envelope again on the next one.
    const queueEmpty = waitForEvent(bob.client, ChatEvent.QueueEmpty, 10_000);
    lossy.control.socket!.close(4000, 'test: connection lost');
    await queueEmpty;
    await waitUntil(() => bob.client.connectionState === ConnectionState.Connected, 'the reconnect');

    // The second ack reaches the relay (an ack frame has no answer: wait for the row to go).
    await waitUntil(async () => (await storedCopies(message.id)) === 0, 'the relay to delete the acked message');
    expect(bob.seen.inbox.received.map((m) => m.text)).toEqual(['open', 'only once']);
    // The delivery receipt of 'only once' still reaches alice (sent again if the drop cut it off).
    await waitUntil(() => alice.seen.receipts.some((r) => r.type === 'delivery' && r.timestamps.includes(message.timestamp)), 'the delivery receipt');
    expect(bob.seen.resets).toEqual([]);
    expect([...alice.seen.errors, ...bob.seen.errors]).toEqual([]);
  });

  it('drops a sync copy from another account (a peer cannot inject "sent" messages) and anything ephemeral but typing', async () => {
    const mallory = await registered('mallory');
    const bob = await registered('bob');
    await Promise.all([mallory.client.connect(), bob.client.connect()]);
    const transmit = transmitContentOf(mallory.client);

    // Kind 4: u8 n | destination | u8 inner kind (1 text) | inner body.
    const destination = utf8(bob.username);
    const syncBody = Uint8Array.from([destination.length, ...destination, 1, ...utf8('I never sent this')]);
    await transmit(bob.username, contentRecord(4, Date.now(), syncBody));
    // Kind 1 (text) sent ephemeral: only typing may come that way.
    await transmit(bob.username, contentRecord(1, Date.now() + 1, utf8('ephemeral text')), { ephemeral: true });
    await mallory.client.send(bob.username, 'an ordinary message');
    await nextText(bob, 'an ordinary message');
    await waitUntil(() => bob.seen.errors.length >= 2, 'both drops reported');

    expect(bob.seen.inbox.received.map((m) => [m.text, m.outgoing, m.conversation])).toEqual([['an ordinary message', false, mallory.username]]);
    expect(bob.seen.errors.map((e) => e.code)).toEqual([SecureChatErrorCode.MalformedContent, SecureChatErrorCode.MalformedContent]);
    // The dropped sync copy was acked like the ordinary message: nothing is left for bob at the relay.
    const queued = async () => {
      const [row] = await fixture.relay.sql<{ count: bigint | number }>(
        'SELECT count(*) AS count FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id JOIN accounts a ON a.id = d.account_id WHERE a.username = $1',
        bob.username,
      );
      return Number(row!.count);
    };
    await waitUntil(async () => (await queued()) === 0, "bob's queue to drain");
  });
});

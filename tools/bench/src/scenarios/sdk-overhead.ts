// Goal 1: what SecureChatClient adds to libsignal per message. Two clients on
// an in-process loopback relay (no network) send 1:1 text messages; each one
// goes through the client's real paths: the outbox, the per-peer serial queue,
// a store transaction around the ratchet step, content encoding and padding,
// and on the receiving side the transaction that decrypts, records the
// envelope, the received-message log and the pending copy, then the `message`
// event and the ack. The baseline is raw libsignal signalEncrypt +
// signalDecrypt of the same padded plaintext over the same memory stores.
// Batches of the two alternate, so that load from elsewhere hits both alike.
// A third side splits the gap: the SDK's session layer alone (PeerSessions
// encrypt and decrypt, content encoding, one store transaction on each side,
// as the client runs them), without the client's bookkeeping around it.
import { randomBytes } from 'node:crypto';
import { ProtocolAddress } from '@signalapp/libsignal-client';
import { ChatEvent, ContentKind, type DeviceId, PADDING_BLOCK, SecureChatClient, type SecureChatStores } from '@chat/signal-sdk';
// Internals, not exported by the SDK: imported from its build, as only an in-repo benchmark may.
// eslint-disable-next-line @nx/enforce-module-boundaries
import { decodeContent, encodeContent } from '../../../../libs/signal-sdk/dist/session/content.js';
// eslint-disable-next-line @nx/enforce-module-boundaries
import { PeerSessions } from '../../../../libs/signal-sdk/dist/session/peer-sessions.js';
import { type BenchRow, ratioOf, type Scenario } from '../report.js';
import { LoopbackRelay } from '../support/loopback-relay.js';
import { rawBundle, rawEncryptDecrypt, rawParty, rawProcessBundle } from '../support/raw-libsignal.js';
import { median, nowMs } from '../stats.js';

const BODY = 'x'.repeat(100);
/** The content the SDK encrypts for BODY: a 14-byte header, the body, the 0x80 marker, padded to the block. */
const PADDED_BYTES = Math.ceil((14 + BODY.length + 1) / PADDING_BLOCK) * PADDING_BLOCK;
const GOAL_RATIO = 1.15;

export const sdkOverhead: Scenario = {
  name: 'sdk-overhead',
  async run(ctx) {
    const rounds = ctx.smoke ? 3 : 20;
    const perRound = ctx.smoke ? 30 : 200;
    const warmUp = ctx.smoke ? 30 : 500;

    const sdk = await sdkPair();
    const raw = await rawPair();
    const sessions = await sessionLayerPair();
    try {
      ctx.log(`warming up (${warmUp} messages each)`);
      const sides = [raw, sessions, sdk];
      const perMessageUs: number[][] = sides.map(() => []);
      for (const side of sides) await side.send(warmUp);
      for (let round = 0; round < rounds; round++) {
        // Rotate which goes first, so none always runs right after another's garbage.
        for (let i = 0; i < sides.length; i++) {
          const index = (round + i) % sides.length;
          const began = nowMs();
          await sides[index].send(perRound);
          perMessageUs[index].push(((nowMs() - began) * 1000) / perRound);
        }
      }
      const [baseline, sessionLayer, value] = perMessageUs.map(median);
      const ratio = ratioOf(value, baseline);
      ctx.log(`SDK ${value.toFixed(0)} µs, session layer ${sessionLayer.toFixed(0)} µs, raw ${baseline.toFixed(0)} µs per message (medians of ${rounds} rounds)`);
      const row: BenchRow = {
        scenario: 'sdk-overhead',
        metric: 'encrypt+decrypt per message',
        value,
        unit: 'µs',
        baseline: { name: 'raw libsignal', value: baseline },
        ratio,
        goal: { text: `≤ ${GOAL_RATIO}× raw libsignal`, met: ratio !== undefined && ratio <= GOAL_RATIO },
        note:
          `median of ${rounds} alternating rounds of ${perRound.toLocaleString('en-US')} messages after ${warmUp} warm-up, ` +
          `${BODY.length}-byte text (${PADDED_BYTES} B padded), send to delivery through SecureChatClient on an in-process relay, memory stores`,
      };
      const layerRow: BenchRow = {
        scenario: 'sdk-overhead',
        metric: 'of which the session layer alone',
        value: sessionLayer,
        unit: 'µs',
        baseline: { name: 'raw libsignal', value: baseline },
        ratio: ratioOf(sessionLayer, baseline),
        note: 'PeerSessions.encrypt/decrypt, content encoding, one store transaction per side; without the outbox, message logs, events and ack',
      };
      return [row, layerRow];
    } finally {
      await sdk.close();
    }
  },
};

interface Pair {
  /** Sends `count` messages one after another, each delivered before the next. */
  send(count: number): Promise<void>;
  close(): Promise<void>;
}

async function sdkPair(): Promise<Pair> {
  const relay = new LoopbackRelay();
  const client = () =>
    SecureChatClient.create({
      relayUrl: 'http://loopback.invalid',
      transport: relay.transport(),
      // One message per message: no receipt travelling back.
      deliveryReceipts: false,
      oneTimePreKeyBatch: 10,
    });
  const alice = client();
  const bob = client();
  await alice.register('alice', 'bench-password-alice');
  await bob.register('bob', 'bench-password-bob');
  let delivered: (() => void) | null = null;
  bob.on(ChatEvent.Message, () => {
    const resolve = delivered;
    delivered = null;
    resolve?.();
  });
  await bob.connect();
  await alice.connect();
  return {
    async send(count) {
      for (let i = 0; i < count; i++) {
        const arrived = new Promise<void>((resolve) => (delivered = resolve));
        await Promise.all([alice.send('bob', BODY), arrived]);
      }
    },
    async close() {
      await alice.close();
      await bob.close();
    },
  };
}

async function rawPair(): Promise<Pair> {
  const alice = await rawParty('alice');
  const bob = await rawParty('bob');
  await rawProcessBundle(alice, bob, await rawBundle(bob, 1));
  const plaintext = new Uint8Array(randomBytes(PADDED_BYTES));
  return {
    async send(count) {
      for (let i = 0; i < count; i++) await rawEncryptDecrypt(alice, bob, plaintext);
    },
    close: async () => undefined,
  };
}

/** The session layer as the client drives it: encode, a transaction around encrypt, a transaction around decrypt, decode. */
async function sessionLayerPair(): Promise<Pair> {
  const alice = await rawParty('alice');
  const bob = await rawParty('bob');
  await rawProcessBundle(alice, bob, await rawBundle(bob, 1));
  const aliceSessions = new PeerSessions(alice.stores, () => alice.address);
  const bobSessions = new PeerSessions(bob.stores, () => bob.address);
  const body = new TextEncoder().encode(BODY);
  const bobDevice = bob.address.deviceId() as DeviceId;
  const aliceDevice = alice.address.deviceId() as DeviceId;
  const transaction = <T>(stores: SecureChatStores, fn: (view: SecureChatStores) => Promise<T>) => {
    if (!stores.transaction) throw new Error('memory stores have transactions');
    return stores.transaction(fn);
  };
  let timestamp = Date.now();
  return {
    async send(count) {
      for (let i = 0; i < count; i++) {
        const content = encodeContent({ kind: ContentKind.Text, timestamp: ++timestamp, body });
        const sent = await aliceSessions.withPeer('bob', () =>
          transaction(alice.stores, async (view) => {
            const message = await aliceSessions.encrypt('bob', bobDevice, content, view);
            // The client reads the session's registration id for the relay's device check.
            await view.session.getSession(ProtocolAddress.new('bob', bobDevice));
            return { type: message.type, ciphertext: Buffer.from(message.ciphertext).toString('base64') };
          }),
        );
        const ciphertext = new Uint8Array(Buffer.from(sent.ciphertext, 'base64'));
        const plaintext = await bobSessions.withPeer('alice', () =>
          transaction(bob.stores, (view) => bobSessions.decrypt('alice', aliceDevice, sent.type, ciphertext, view)),
        );
        decodeContent(plaintext);
      }
    },
    close: async () => undefined,
  };
}

// Goal 1: what SecureChatClient adds to libsignal per message. Two clients on
// an in-process loopback relay (no network) send 1:1 text messages; each one
// goes through the client's real paths: the outbox, the per-peer serial queue,
// a store transaction around the ratchet step, content encoding and padding,
// and on the receiving side the transaction that decrypts, records the
// envelope, the received-message log and the pending copy, then the `message`
// event and the ack. The baseline is raw libsignal signalEncrypt +
// signalDecrypt of the same padded plaintext over the same memory stores.
// Batches of the two alternate, so that load from elsewhere hits both alike.
import { ChatEvent, PADDING_BLOCK, SecureChatClient } from '@chat/signal-sdk';
import { randomBytes } from 'node:crypto';
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
    try {
      ctx.log(`warming up (${warmUp} messages each)`);
      await sdk.send(warmUp);
      await raw.send(warmUp);
      const sdkUs: number[] = [];
      const rawUs: number[] = [];
      for (let round = 0; round < rounds; round++) {
        // Alternate which goes first, so neither always runs right after the other's garbage.
        const order = round % 2 === 0 ? ([raw, sdk] as const) : ([sdk, raw] as const);
        for (const side of order) {
          const began = nowMs();
          await side.send(perRound);
          (side === sdk ? sdkUs : rawUs).push(((nowMs() - began) * 1000) / perRound);
        }
      }
      const value = median(sdkUs);
      const baseline = median(rawUs);
      const ratio = ratioOf(value, baseline);
      ctx.log(`SDK ${value.toFixed(0)} µs, raw ${baseline.toFixed(0)} µs per message (medians of ${rounds} rounds)`);
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
      return [row];
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
    async close() {},
  };
}

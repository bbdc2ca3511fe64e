// Goal 2: what opening a session costs through the SDK and a real relay: a
// fresh SecureChatClient sends its first message to a peer it has no session
// with, so it fetches the peer's prekey bundle over HTTP, runs PQXDH, encrypts
// and posts a PreKey message, and the peer's client (connected over a
// WebSocket) decrypts it (PQXDH responder side) and emits it. Timed from
// send() to the peer's `message` event, one set-up after another. The baseline
// is raw libsignal in-process: processPreKeyBundle, the first encrypt and its
// decrypt, over memory stores (prekey generation not timed).
import { randomBytes } from 'node:crypto';
import { ChatEvent, SecureChatClient } from '@chat/signal-sdk';
import { startRelay } from '@chat/relay-harness';
import { type BenchRow, ratioOf, type Scenario } from '../report.js';
import { rawBundle, rawEncryptDecrypt, rawParty, rawProcessBundle } from '../support/raw-libsignal.js';
import { mean, median, nowMs } from '../stats.js';

const PASSWORD = 'bench-password-setup';

export const sessionSetup: Scenario = {
  name: 'session-setup',
  async run(ctx) {
    // The peer uploads 100 one-time prekeys; more set-ups than that would use its last-resort Kyber key.
    const setups = ctx.smoke ? 5 : 60;
    const relay = await startRelay({ logLevel: 'warn' });
    const clients: SecureChatClient[] = [];
    const tag = randomBytes(3).toString('hex');
    try {
      const client = (options: { deliveryReceipts: boolean; oneTimePreKeyBatch?: number }) => {
        const created = SecureChatClient.create({ relayUrl: relay.url, ...options });
        clients.push(created);
        return created;
      };
      // No receipts: a receipt back would be a second set-up, in the other direction.
      const peer = client({ deliveryReceipts: false });
      const peerName = `peer_${tag}`;
      await peer.register(peerName, PASSWORD);
      const arrivals = new Map<string, () => void>();
      peer.on(ChatEvent.Message, (message) => arrivals.get(message.sender)?.());
      await peer.connect();

      ctx.log(`registering ${setups} senders`);
      const senders: Array<{ name: string; client: SecureChatClient }> = [];
      for (let i = 0; i < setups; i++) {
        const sender = { name: `s${i}_${tag}`, client: client({ deliveryReceipts: false, oneTimePreKeyBatch: 1 }) };
        await sender.client.register(sender.name, PASSWORD);
        senders.push(sender);
      }

      const sdkMs: number[] = [];
      for (const sender of senders) {
        const arrived = new Promise<void>((resolve) => arrivals.set(sender.name, resolve));
        const began = nowMs();
        await Promise.all([sender.client.send(peerName, 'hello'), arrived]);
        sdkMs.push(nowMs() - began);
      }

      const rawMs: number[] = [];
      const rawPeer = await rawParty('peer');
      const plaintext = new Uint8Array(randomBytes(160));
      for (let i = 0; i < setups; i++) {
        const sender = await rawParty(`s${i}`);
        const bundle = await rawBundle(rawPeer, i + 1);
        const began = nowMs();
        await rawProcessBundle(sender, rawPeer, bundle);
        await rawEncryptDecrypt(sender, rawPeer, plaintext);
        rawMs.push(nowMs() - began);
      }

      const rate = 1000 / mean(sdkMs);
      const rawRate = 1000 / mean(rawMs);
      ctx.log(`SDK via relay ${median(sdkMs).toFixed(1)} ms, raw ${median(rawMs).toFixed(2)} ms per set-up (medians)`);
      const note = `${setups} set-ups one after another, each a new sender to one connected peer; relay on ${relay.database}, LOG_LEVEL=warn`;
      const rows: BenchRow[] = [
        {
          scenario: 'session-setup',
          metric: 'bundle fetch + PQXDH + first message, via relay',
          value: rate,
          unit: 'set-ups/s',
          baseline: { name: 'raw libsignal in-process', value: rawRate },
          ratio: ratioOf(rate, rawRate),
          note,
        },
        {
          scenario: 'session-setup',
          metric: 'time per set-up (median)',
          value: median(sdkMs),
          unit: 'ms',
          baseline: { name: 'raw libsignal in-process', value: median(rawMs) },
          ratio: ratioOf(median(sdkMs), median(rawMs)),
        },
      ];
      return rows;
    } finally {
      for (const created of clients) await created.close().catch(() => undefined);
      await relay.close();
    }
  },
};

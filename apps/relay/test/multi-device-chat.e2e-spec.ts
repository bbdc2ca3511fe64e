import { describe, expect, it } from '@jest/globals';
import { ProtocolAddress } from '@signalapp/libsignal-client';
import { ChatEvent, SecureChatClient, SecureChatErrorCode, type IncomingMessage, type SecureChatError } from '@chat/signal-sdk';
import { createMemoryStores, waitForEvent } from '@chat/signal-sdk/testing';
import { startRewritingProxy, type ProxiedAnswer } from './support/rewriting-proxy.js';
import { useSdkRelay } from './support/sdk-relay.js';
import { DEFAULT_TEST_PASSWORD, uniqueUsername } from './support/test-relay.js';
import { until } from './support/wait.js';

// Issue 5, acceptance 1: a user on three devices chats with a user on two.
// Every device sees every message of the conversation, the sync copies of
// its own account's messages included, in order; unlinking a device makes
// the next send to the account 410 (STALE_DEVICES) and the sender's SDK drops
// that device's session on its own. Real relay, real database, real sockets.

const fixture = useSdkRelay('multi-device');

interface Device {
  name: string;
  client: SecureChatClient;
  /** What this device's app was handed, in order. */
  seen: IncomingMessage[];
}

/** A message as a device's app shows it: who wrote it, in which conversation, what. */
const line = (message: IncomingMessage) => `${message.outgoing ? 'me' : 'peer'}@${message.conversation}:${message.text}`;

describe('a user on three devices chatting with a user on two', () => {
  function newDevice(name: string, relayUrl = fixture.relay.baseUrl): Device {
    const client = SecureChatClient.create({ relayUrl, stores: createMemoryStores(), deliveryReceipts: false });
    fixture.clients.push(client);
    const device: Device = { name, client, seen: [] };
    client.on(ChatEvent.Message, (message) => void device.seen.push(message));
    return device;
  }

  /** Links a new install to `approver`'s account through the provisioning URI. */
  async function link(approver: Device, name: string, relayUrl?: string): Promise<Device> {
    const device = newDevice(name, relayUrl);
    const pending = await device.client.beginLinking({ pollIntervalMs: 50 });
    await approver.client.approveLink(pending.uri);
    await pending.completion;
    return device;
  }

  it('shows every message on every device, sync copies included, in order; unlinking makes the next send 410 and drops the session', async () => {
    const alice = uniqueUsername('alice');
    const bob = uniqueUsername('bob');
    const a1 = newDevice('a1');
    await a1.client.register(alice, DEFAULT_TEST_PASSWORD);
    const b1 = newDevice('b1');
    await b1.client.register(bob, DEFAULT_TEST_PASSWORD);
    const a2 = await link(a1, 'a2');
    const a3 = await link(a1, 'a3');
    // b2 reaches the relay through a proxy that records every HTTP answer, so the 410 can be seen.
    const answers: ProxiedAnswer[] = [];
    const proxy = await startRewritingProxy(fixture.relay, (answer) => {
      answers.push(answer);
      return undefined;
    });
    const b2 = await link(b1, 'b2', proxy.baseUrl);

    expect([a1, a2, a3].map((device) => [device.client.username, device.client.deviceId])).toEqual([
      [alice, 1],
      [alice, 2],
      [alice, 3],
    ]);
    expect([b1, b2].map((device) => [device.client.username, device.client.deviceId])).toEqual([
      [bob, 1],
      [bob, 2],
    ]);
    expect((await a1.client.listDevices()).map((device) => device.deviceId)).toEqual([1, 2, 3]);

    const aliceDevices = [a1, a2, a3];
    const bobDevices = [b1, b2];
    const everyone = [...aliceDevices, ...bobDevices];
    await Promise.all(everyone.map((device) => device.client.connect()));

    // A conversation from every device in turn, then bursts from two devices at once.
    const script: Array<[Device, string]> = [
      [a1, 'hi bob, from my phone'],
      [b1, 'hi alice'],
      [a2, 'now on my laptop'],
      [b2, 'and I on my tablet'],
      [a3, 'and a third device'],
      [b1, 'all of them get this'],
    ];
    const sent: Array<[Device, string]> = [];
    for (const [from, text] of script) {
      const to = from.client.username === alice ? bob : alice;
      await from.client.send(to, text);
      sent.push([from, text]);
      // One at a time: each device must have it before the next is sent, so the expected order is the script's.
      const others = everyone.filter((device) => device !== from);
      await until(() => others.every((device) => device.seen.some((message) => message.text === text)), `"${text}" on every other device`);
    }
    const burst = async (from: Device, count: number) => {
      const to = from.client.username === alice ? bob : alice;
      for (let i = 0; i < count; i++) {
        const text = `${from.name} burst ${i}`;
        sent.push([from, text]);
        await from.client.send(to, text);
      }
    };
    await Promise.all([burst(a2, 15), burst(b2, 15)]);
    await until(() => everyone.every((device) => device.seen.length === sent.filter(([from]) => from !== device).length), 'every burst message on every device');

    for (const device of everyone) {
      const mine = device.client.username;
      const peer = mine === alice ? bob : alice;
      // What this device must show: every message of the conversation it did not send itself,
      // its own account's as sync copies ("me"), the peer's as incoming ("peer").
      const expected = sent
        .filter(([from]) => from !== device)
        .map(([from, text]) => `${from.client.username === mine ? 'me' : 'peer'}@${peer}:${text}`);
      const shown = device.seen.map(line);
      // Per-sender order within the bursts, and the whole script in order, on every device.
      for (const sender of everyone.filter((other) => other !== device)) {
        const fromSender = (lines: string[]) => lines.filter((entry) => sent.some(([from, text]) => from === sender && entry.endsWith(`:${text}`)));
        expect(fromSender(shown)).toEqual(fromSender(expected));
      }
      const fromScript = script.filter(([from]) => from !== device).length;
      expect(shown.slice(0, fromScript)).toEqual(expected.slice(0, fromScript));
      expect([...shown].sort()).toEqual([...expected].sort());
      // Sync copies come from the own account, the others from the peer.
      for (const message of device.seen) expect(message.sender).toBe(message.outgoing ? mine : peer);
    }

    // Unlink a3 from a1. a3's client learns it and stops.
    const a3Unlinked = waitForEvent(a3.client, ChatEvent.Error, 10_000);
    await a1.client.unlinkDevice(3);
    const [unlinkedError] = (await a3Unlinked) as [SecureChatError];
    expect(unlinkedError.code).toBe(SecureChatErrorCode.DeviceUnlinked);
    expect((await a1.client.listDevices()).map((device) => device.deviceId)).toEqual([1, 2]);

    // b2 still has a session with alice's device 3; its next send, over HTTP, is refused with 410 and corrected.
    await b2.client.close();
    const address3 = ProtocolAddress.new(alice, 3);
    expect(await b2.client.stores.session.getSession(address3)).not.toBeNull();
    answers.length = 0;
    const before = new Map(everyone.map((device) => [device, device.seen.length]));
    await b2.client.send(alice, 'after the unlink');
    const sends = answers.filter((answer) => answer.method === 'POST' && answer.path === '/v1/messages');
    expect(sends.map((answer) => answer.status)).toEqual([410, 201]);
    expect((sends[0]?.body as { code: string; stale: unknown }).code).toBe('STALE_DEVICES');
    expect((sends[0]?.body as { stale: unknown }).stale).toEqual([{ username: alice, devices: [3] }]);
    expect(await b2.client.stores.session.getSession(address3)).toBeNull();

    await until(() => [a1, a2, b1].every((device) => device.seen.length === (before.get(device) ?? 0) + 1), 'the message after the unlink on alice 1, 2 and bob 1');
    for (const device of [a1, a2]) expect(line(device.seen.at(-1) as IncomingMessage)).toBe(`peer@${bob}:after the unlink`);
    expect(line(b1.seen.at(-1) as IncomingMessage)).toBe(`me@${alice}:after the unlink`);
    expect(a3.seen.length).toBe(before.get(a3));
    await proxy.close();
  }, 120_000);
});

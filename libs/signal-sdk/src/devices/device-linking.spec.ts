import { describe, expect, it } from '@jest/globals';
import { CloseCode, ErrorCode } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { ChatEvent, ConnectionState } from '../events.js';
import { SecureChatClient } from '../secure-chat-client.js';
import { createMemoryStores } from '../stores/memory-stores.js';
import type { SecureChatStores } from '../stores/stores.js';
import { FakeRelay } from '../test-support/fake-relay.js';
import type { RelayTransport } from '../transport/relay-transport.js';
import { parseLinkUri } from './link-uri.js';
import { failure, until } from '../test-support/spec-helpers.js';

const PASSWORD = 'correct horse battery';

function client(transport: RelayTransport, stores: SecureChatStores = createMemoryStores()) {
  const made = SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport, stores, oneTimePreKeyBatch: 5 });
  const errors: SecureChatError[] = [];
  made.on(ChatEvent.Error, (error) => void errors.push(error));
  return { client: made, stores, errors };
}

async function registeredAlice(relay: FakeRelay, transport: RelayTransport = relay.transport()) {
  const alice = client(transport);
  await alice.client.register('alice', PASSWORD);
  return alice;
}

/** Links `newInstall` to `approver`'s account through the link URI. */
async function linkApproved(newInstall: SecureChatClient, approver: SecureChatClient): Promise<void> {
  const { uri, completion } = await newInstall.beginLinking({ pollIntervalMs: 5 });
  await approver.approveLink(uri);
  await completion;
}

describe('device linking', () => {
  it('a new install linked through the URI holds the account identity key pair, its own registration id, device 2, and has uploaded its keys', async () => {
    const relay = new FakeRelay();
    const alice = await registeredAlice(relay);
    const second = client(relay.transport());

    await linkApproved(second.client, alice.client);

    const aliceIdentity = (await alice.stores.identity.getLocalIdentity())!;
    const linkedIdentity = (await second.stores.identity.getLocalIdentity())!;
    expect(linkedIdentity.identityKeyPair.serialize()).toEqual(aliceIdentity.identityKeyPair.serialize());
    expect(await second.stores.metadata.getAccount()).toEqual({ username: 'alice', deviceId: 2 });
    expect(second.client.username).toBe('alice');
    expect(second.client.deviceId).toBe(2);
    expect(await second.stores.metadata.getRefreshToken()).toEqual(expect.any(String));
    const upload = relay.uploads.at(-1)!;
    expect(upload.keys.identityKey).toBe(Buffer.from(aliceIdentity.identityKeyPair.publicKey.serialize()).toString('base64'));
    expect(upload.keys.registrationId).toBe(linkedIdentity.registrationId);
    expect(upload.keys.preKeys).toHaveLength(5);
    expect(relay.provisioningSlots.size).toBe(0);
    expect(second.errors).toEqual([]);
  });

  it('the relay only ever holds the sealed message, never the identity private key', async () => {
    const relay = new FakeRelay();
    const alice = await registeredAlice(relay);
    const second = client(relay.transport());
    const { uri } = await second.client.beginLinking({ pollIntervalMs: 60_000 });
    await alice.client.approveLink(uri);

    const { slotId } = parseLinkUri(uri);
    const stored = Buffer.from(relay.provisioningSlots.get(slotId)!.message!, 'base64');
    const privateKey = Buffer.from((await alice.stores.identity.getLocalIdentity())!.identityKeyPair.privateKey.serialize());
    expect(stored.length).toBeGreaterThan(0);
    expect(stored.includes(privateKey)).toBe(false);
    expect(stored.toString('latin1')).not.toContain(privateKey.toString('base64'));
    await second.client.close();
  });

  it('without approval the completion keeps waiting; aborting rejects with the reason and saves nothing', async () => {
    const relay = new FakeRelay();
    const second = client(relay.transport());
    const controller = new AbortController();
    let polls = 0;
    const counting: RelayTransport = {
      ...relay.transport(),
      receiveProvisioningMessage: (id, secret) => {
        polls++;
        return relay.transport().receiveProvisioningMessage(id, secret);
      },
    };
    const counted = client(counting, second.stores);
    const { completion } = await counted.client.beginLinking({ pollIntervalMs: 5, signal: controller.signal });
    let settled = false;
    void completion.then(
      () => (settled = true),
      () => (settled = true),
    );
    await until(() => polls >= 5);
    expect(settled).toBe(false);
    const reason = new Error('user went back');
    controller.abort(reason);
    await expect(completion).rejects.toBe(reason);
    expect(await counted.stores.identity.getLocalIdentity()).toBeNull();
    expect(await counted.stores.metadata.getAccount()).toBeNull();
  });

  it('a slot the relay no longer knows ends the completion with LinkExpired, nothing saved', async () => {
    const relay = new FakeRelay();
    const second = client(relay.transport());
    const { uri, completion } = await second.client.beginLinking({ pollIntervalMs: 5 });
    relay.provisioningSlots.delete(parseLinkUri(uri).slotId);
    const error = await failure(completion);
    expect(error.code).toBe(SecureChatErrorCode.LinkExpired);
    expect(await second.stores.identity.getLocalIdentity()).toBeNull();
  });

  it('a message sealed for another slot is refused (DecryptionFailed) and the device is not linked', async () => {
    const relay = new FakeRelay();
    const alice = await registeredAlice(relay);
    const first = client(relay.transport());
    const second = client(relay.transport());
    const one = await first.client.beginLinking({ pollIntervalMs: 5 });
    const two = await second.client.beginLinking({ pollIntervalMs: 5 });
    // Seal to the second device's key but for the first slot id: the associated data no longer matches.
    const mixed = `securechat://link?id=${parseLinkUri(one.uri).slotId}&pub=${two.uri.split('&pub=')[1]}`;
    await alice.client.approveLink(mixed);
    expect((await failure(one.completion)).code).toBe(SecureChatErrorCode.DecryptionFailed);
    expect(relay.linkedDevices.get('alice') ?? []).toEqual([]);
    expect(await first.stores.identity.getLocalIdentity()).toBeNull();
    await second.client.close();
    expect((await failure(two.completion)).code).toBe(SecureChatErrorCode.InvalidState);
  });

  it('refuses to link an install whose stores hold an identity, or a signed-in client, or a second linking at once', async () => {
    const relay = new FakeRelay();
    const alice = await registeredAlice(relay);
    expect((await failure(alice.client.beginLinking())).code).toBe(SecureChatErrorCode.InvalidState);
    const stale = client(relay.transport(), alice.stores);
    expect((await failure(stale.client.beginLinking())).code).toBe(SecureChatErrorCode.InvalidState);
    const fresh = client(relay.transport());
    const controller = new AbortController();
    const { completion } = await fresh.client.beginLinking({ pollIntervalMs: 5, signal: controller.signal });
    expect((await failure(fresh.client.beginLinking())).code).toBe(SecureChatErrorCode.InvalidState);
    expect((await failure(fresh.client.beginLinking({ pollIntervalMs: 0 }))).code).toBe(SecureChatErrorCode.InvalidArgument);
    controller.abort();
    await completion.catch(() => undefined);
  });

  it('approveLink refuses a malformed URI (InvalidArgument) and a slot already approved (PROVISIONING_NOT_FOUND)', async () => {
    const relay = new FakeRelay();
    const alice = await registeredAlice(relay);
    expect((await failure(alice.client.approveLink('securechat://link?id=x&pub=y'))).code).toBe(SecureChatErrorCode.InvalidArgument);
    const second = client(relay.transport());
    const { uri } = await second.client.beginLinking({ pollIntervalMs: 60_000 });
    await alice.client.approveLink(uri);
    expect(SecureChatError.isRelay(await failure(alice.client.approveLink(uri)), ErrorCode.ProvisioningNotFound)).toBe(true);
    await second.client.close();
  });

  it('login of a linked install signs in as its own device id', async () => {
    const relay = new FakeRelay();
    const alice = await registeredAlice(relay);
    const logins: Array<number | undefined> = [];
    const transport: RelayTransport = {
      ...relay.transport(),
      login: (credentials, deviceId) => {
        logins.push(deviceId);
        return relay.transport().login(credentials, deviceId);
      },
    };
    const second = client(transport);
    await linkApproved(second.client, alice.client);

    const restarted = client(transport, second.stores);
    await restarted.client.login('alice', PASSWORD);
    expect(logins).toEqual([2]);
  });

  it('listDevices and unlinkDevice speak for the account', async () => {
    const relay = new FakeRelay();
    const alice = await registeredAlice(relay);
    const second = client(relay.transport());
    await linkApproved(second.client, alice.client);

    expect((await alice.client.listDevices()).map((d) => [d.deviceId, d.current])).toEqual([
      [1, true],
      [2, false],
    ]);
    expect(SecureChatError.isRelay(await failure(alice.client.unlinkDevice(1)), ErrorCode.PrimaryDevice)).toBe(true);
    expect((await failure(alice.client.unlinkDevice(0))).code).toBe(SecureChatErrorCode.InvalidArgument);
    await alice.client.unlinkDevice(2);
    expect((await alice.client.listDevices()).map((d) => d.deviceId)).toEqual([1]);
    expect(SecureChatError.isRelay(await failure(alice.client.unlinkDevice(2)), ErrorCode.DeviceNotFound)).toBe(true);
  });
});

describe('an unlinked device', () => {
  it('close 4410 stops the client and emits DeviceUnlinked once; every later call is refused with InvalidState', async () => {
    const relay = new FakeRelay();
    const alice = await registeredAlice(relay);
    await alice.client.connect();
    relay.closeSocketOf('alice', CloseCode.DeviceUnlinked, ErrorCode.DeviceUnlinked);
    await until(() => alice.errors.length > 0);
    expect(alice.errors.map((e) => e.code)).toEqual([SecureChatErrorCode.DeviceUnlinked]);
    expect(alice.client.connectionState).toBe(ConnectionState.Disconnected);
    expect(await alice.stores.metadata.getRefreshToken()).toBeNull();
    expect((await failure(alice.client.send('bob', 'hi'))).code).toBe(SecureChatErrorCode.InvalidState);
    expect((await failure(alice.client.login('alice', PASSWORD))).code).toBe(SecureChatErrorCode.InvalidState);
    await new Promise((resolve) => setTimeout(resolve, 30));
    // (Key maintenance started on connect and still running may also report that the client stopped.)
    expect(alice.errors.filter((e) => e.is(SecureChatErrorCode.DeviceUnlinked))).toHaveLength(1);
  });

  it('the relay refusing a request with DEVICE_UNLINKED rejects it with DeviceUnlinked and stops the client', async () => {
    const relay = new FakeRelay();
    let unlinked = false;
    const transport: RelayTransport = {
      ...relay.transport(),
      listDevices: (token) =>
        unlinked
          ? Promise.reject(new SecureChatError(SecureChatErrorCode.RelayRejected, 'DEVICE_UNLINKED', { relayCode: ErrorCode.DeviceUnlinked, status: 401 }))
          : relay.transport().listDevices(token),
    };
    const alice = await registeredAlice(relay, transport);
    await alice.client.connect();
    unlinked = true;
    const error = await failure(alice.client.listDevices());
    expect(error.code).toBe(SecureChatErrorCode.DeviceUnlinked);
    expect(error.relayCode).toBe(ErrorCode.DeviceUnlinked);
    expect(alice.errors.map((e) => e.code)).toEqual([SecureChatErrorCode.DeviceUnlinked]);
    expect(alice.client.connectionState).toBe(ConnectionState.Disconnected);
    expect((await failure(alice.client.listDevices())).code).toBe(SecureChatErrorCode.InvalidState);
  });
});

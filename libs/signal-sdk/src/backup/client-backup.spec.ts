import { describe, expect, it } from '@jest/globals';
import { ErrorCode, PREKEY_LOW_THRESHOLD, type AuthResponse, type BackupResponse, type UploadKeysRequest } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { SecureChatClient } from '../secure-chat-client.js';
import { createMemoryStores } from '../stores/memory-stores.js';
import type { SecureChatStores } from '../stores/stores.js';
import type { Credentials, RelayTransport } from '../transport/relay-transport.js';
import { RESTORE_KEY_ID_MARGIN } from './account-backup.js';
import { generateRecoverySecret } from './recovery-secret.js';
import { failure } from '../test-support/spec-helpers.js';

const PASSWORD = 'correct horse battery';
const CHEAP_KDF = { logN: 10, r: 8, p: 1 };

/**
 * The part of the relay that registration, backup and restore use, in
 * memory: one account, its key uploads and its backup blob. Everything else
 * is not reached by these specs and fails loudly if it is.
 */
class BackupRelay {
  readonly uploads: UploadKeysRequest[] = [];
  backup: BackupResponse | undefined;
  failNextUpload = false;
  private password: string | undefined;

  transport(): RelayTransport {
    const auth = (username: string): AuthResponse => ({
      accountId: 'acc',
      username,
      deviceId: 1,
      accessToken: 'token',
      expiresIn: 900,
      refreshToken: 'refresh',
    });
    const refuse = (relayCode: ErrorCode) => Promise.reject(new SecureChatError(SecureChatErrorCode.RelayRejected, relayCode, { relayCode }));
    const unused = () => Promise.reject(new Error('not used by backup specs'));
    return {
      register: async ({ username, password }: Credentials) => {
        this.password = password;
        return auth(username);
      },
      login: async ({ username, password }: Credentials) => (password === this.password ? auth(username) : refuse(ErrorCode.InvalidCredentials)),
      refresh: unused,
      changePassword: unused,
      deleteAccount: unused,
      uploadKeys: async (_token: string, keys: UploadKeysRequest) => {
        if (this.failNextUpload) {
          this.failNextUpload = false;
          throw new SecureChatError(SecureChatErrorCode.Network, 'connection reset');
        }
        this.uploads.push(keys);
      },
      getPreKeyCount: async () => ({ preKeys: 100, kyberPreKeys: 100, threshold: PREKEY_LOW_THRESHOLD, refill: false }),
      getPreKeyBundle: unused,
      sendMessage: unused,
      ackMessage: unused,
      openSocket: unused,
      putBackup: async (_token: string, { blob }: { blob: string }) => {
        this.backup = { blob, updatedAt: Date.now() };
      },
      getBackup: async () => this.backup ?? refuse(ErrorCode.BackupNotFound),
      deleteBackup: async () => {
        this.backup = undefined;
      },
      createProvisioningSlot: unused,
      putProvisioningMessage: unused,
      receiveProvisioningMessage: unused,
      linkDevice: unused,
      listDevices: unused,
      unlinkDevice: unused,
      getSenderCertificate: unused,
      putUnidentifiedAccess: async () => undefined,
      sendSealed: unused,
      sendMultiRecipient: unused,
      lookupAccount: unused,
    };
  }
}

function clientOn(relay: BackupRelay, stores: SecureChatStores = createMemoryStores()) {
  return { client: SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', transport: relay.transport(), stores, backupKdf: CHEAP_KDF }), stores };
}

/** alice registered on one install and backed up with `secret`. */
async function backedUp() {
  const relay = new BackupRelay();
  const old = clientOn(relay);
  await old.client.register('alice', PASSWORD);
  const secret = generateRecoverySecret();
  await old.client.createBackup(secret);
  return { relay, old, secret };
}

async function expectEmpty(stores: SecureChatStores) {
  expect(await stores.identity.getLocalIdentity()).toBeNull();
  expect(await stores.metadata.getAccount()).toBeNull();
  expect(await stores.identity.getTrustedIdentities()).toEqual([]);
}

describe('SecureChatClient backup', () => {
  it('refuses createBackup before sign-in and with a malformed secret, uploading nothing', async () => {
    const relay = new BackupRelay();
    const { client } = clientOn(relay);
    expect((await failure(client.createBackup(generateRecoverySecret()))).code).toBe(SecureChatErrorCode.InvalidState);
    await client.register('alice', PASSWORD);
    expect((await failure(client.createBackup('1234'))).code).toBe(SecureChatErrorCode.InvalidRecoverySecret);
    expect(relay.backup).toBeUndefined();
  });

  it('refuses scrypt options outside the bounds with InvalidOptions', () => {
    expect(() => SecureChatClient.create({ relayUrl: 'http://127.0.0.1:1', backupKdf: { logN: 8, r: 8, p: 1 } })).toThrow(
      expect.objectContaining({ code: SecureChatErrorCode.InvalidOptions }),
    );
  });

  it("restores the identity into a new install, then uploads fresh signed and one-time keys that replace the relay's", async () => {
    const { relay, old, secret } = await backedUp();
    const fresh = clientOn(relay);
    await fresh.client.restoreFromBackup('alice', PASSWORD, secret);

    const oldIdentity = await old.stores.identity.getLocalIdentity();
    const restored = await fresh.stores.identity.getLocalIdentity();
    expect(restored?.identityKeyPair.serialize()).toEqual(oldIdentity?.identityKeyPair.serialize());
    expect(restored?.registrationId).toBe(oldIdentity?.registrationId);
    expect(fresh.client.username).toBe('alice');

    const upload = relay.uploads.at(-1)!;
    expect(upload.replaceOneTimePreKeys).toBe(true);
    expect(upload.identityKey).toBe(relay.uploads[0]!.identityKey);
    expect(upload.signedPreKey).toBeDefined();
    expect(upload.kyberLastResortPreKey).toBeDefined();
    expect(upload.preKeys).toHaveLength(100);
    expect(upload.kyberPreKeys).toHaveLength(100);
    // No new id repeats one the old install handed out.
    const oldIds = new Set(relay.uploads[0]!.preKeys!.map((key) => key.keyId));
    expect(upload.preKeys!.every((key) => !oldIds.has(key.keyId) && key.keyId > RESTORE_KEY_ID_MARGIN)).toBe(true);
    // The private halves of the new keys are in the new stores.
    await expect(fresh.stores.preKey.getPreKey(upload.preKeys![0]!.keyId)).resolves.toBeDefined();
  });

  it('refuses a wrong secret with WrongRecoverySecret: the stores stay empty, the client signed out, nothing uploaded', async () => {
    const { relay } = await backedUp();
    const fresh = clientOn(relay);
    const error = await failure(fresh.client.restoreFromBackup('alice', PASSWORD, generateRecoverySecret()));
    expect(error.code).toBe(SecureChatErrorCode.WrongRecoverySecret);
    await expectEmpty(fresh.stores);
    expect(fresh.client.username).toBeNull();
    expect(relay.uploads).toHaveLength(1);
  });

  it('says BackupNotFound when the account has no backup, and InvalidRecoverySecret before asking the relay', async () => {
    const relay = new BackupRelay();
    await clientOn(relay).client.register('alice', PASSWORD);
    const fresh = clientOn(relay);
    const notFound = await failure(fresh.client.restoreFromBackup('alice', PASSWORD, generateRecoverySecret()));
    expect(notFound.code).toBe(SecureChatErrorCode.BackupNotFound);
    expect(notFound.relayCode).toBe(ErrorCode.BackupNotFound);
    expect((await failure(fresh.client.restoreFromBackup('alice', 'wrong password', generateRecoverySecret()))).relayCode).toBe(
      ErrorCode.InvalidCredentials,
    );
    expect((await failure(fresh.client.restoreFromBackup('alice', PASSWORD, 'not a secret'))).code).toBe(
      SecureChatErrorCode.InvalidRecoverySecret,
    );
    await expectEmpty(fresh.stores);
  });

  it('finishes a restore whose key upload failed when it is called again', async () => {
    const { relay, secret } = await backedUp();
    const fresh = clientOn(relay);
    relay.failNextUpload = true;
    expect((await failure(fresh.client.restoreFromBackup('alice', PASSWORD, secret))).code).toBe(SecureChatErrorCode.Network);
    expect(relay.uploads).toHaveLength(1);

    await fresh.client.restoreFromBackup('alice', PASSWORD, secret);
    expect(relay.uploads).toHaveLength(2);
    expect(relay.uploads[1]!.replaceOneTimePreKeys).toBe(true);
  });

  it('refuses to restore over an install of another identity with InvalidState', async () => {
    const { relay, secret } = await backedUp();
    const other = clientOn(new BackupRelay());
    await other.client.register('alice', PASSWORD);
    const before = (await other.stores.identity.getLocalIdentity())!.identityKeyPair.serialize();
    const otherOnSameRelay = clientOn(relay, other.stores);
    expect((await failure(otherOnSameRelay.client.restoreFromBackup('alice', PASSWORD, secret))).code).toBe(
      SecureChatErrorCode.InvalidState,
    );
    expect((await other.stores.identity.getLocalIdentity())!.identityKeyPair.serialize()).toEqual(before);
  });

  it('deletes the backup', async () => {
    const { relay, old } = await backedUp();
    expect(relay.backup).toBeDefined();
    await old.client.deleteBackup();
    expect(relay.backup).toBeUndefined();
  });
});

/**
 * Victims for the authorization matrix: an account with a linked second
 * device, and everything the relay keeps of an account read back with SQL,
 * so that a spec can prove an attack left it exactly as it was.
 */
import { randomBytes } from 'node:crypto';
import type { IdentityKeyPair } from '@signalapp/libsignal-client';
import type { AuthResponse, ProvisioningSlotResponse } from '@chat/protocol';
import { DeviceKeys } from '../../support/libsignal-keys.js';
import { httpJson, type TestRelay } from '../../support/test-relay.js';

/** A device that has uploaded keys, with its registration id (every device message must name it). */
export interface KeyedDevice {
  auth: AuthResponse;
  keys: DeviceKeys;
}

/**
 * Links a second device to `primary`'s account the way a new install does
 * (open a slot, approve it with the primary's token, link with the slot's
 * secret) and uploads its keys under the account's `identity`.
 */
export async function linkKeyedDevice(relay: Pick<TestRelay, 'baseUrl'>, primary: AuthResponse, identity: IdentityKeyPair): Promise<KeyedDevice> {
  const slot = await httpJson<ProvisioningSlotResponse>(relay, 'POST', '/v1/provisioning');
  if (slot.status !== 201) throw new Error(`open a slot: HTTP ${slot.status}`);
  // The provisioning message is opaque to the relay; its content does not matter here.
  const approval = await httpJson(relay, 'PUT', `/v1/provisioning/${slot.body.id}`, {
    token: primary.accessToken,
    body: { message: randomBytes(64).toString('base64') },
  });
  if (approval.status !== 204) throw new Error(`approve a slot: HTTP ${approval.status} ${approval.body?.code}`);
  const linked = await httpJson<AuthResponse>(relay, 'POST', '/v1/devices/link', {
    body: { provisioningId: slot.body.id, secret: slot.body.secret },
  });
  if (linked.status !== 201) throw new Error(`link: HTTP ${linked.status} ${linked.body?.code}`);
  const keys = new DeviceKeys({ identity, preKeys: 3, kyberPreKeys: 3 });
  const upload = await httpJson(relay, 'PUT', '/v1/keys', { token: linked.body.accessToken, body: keys.uploadRequest() });
  if (upload.status !== 204) throw new Error(`upload keys of the linked device: HTTP ${upload.status} ${upload.body?.code}`);
  return { auth: linked.body, keys };
}

/** Everything the relay stores of one account, as plain values (bytes as hex), in a stable order. */
export interface AccountState {
  account: Record<string, unknown> | undefined;
  devices: Record<string, unknown>[];
  oneTimePreKeys: Record<string, unknown>[];
  kyberPreKeys: Record<string, unknown>[];
  inbox: Record<string, unknown>[];
  backup: Record<string, unknown>[];
  refreshTokens: Record<string, unknown>[];
  unlinkedDevices: Record<string, unknown>[];
  provisioningSlots: Record<string, unknown>[];
}

/**
 * The account's row (password hash, identity key, credential version,
 * access key), its devices and their keys, the messages queued for them,
 * its backup, refresh tokens, tombstones and approved slots. Leaves out
 * `keys_low_notified_at`, which a bundle fetch by anyone may set by design.
 */
export async function accountState(relay: Pick<TestRelay, 'sql'>, accountId: string): Promise<AccountState> {
  const of = (query: string) => relay.sql(query, accountId);
  const [account] = await of(
    `SELECT id, username, password_hash, encode(identity_key, 'hex') AS identity_key, credential_version,
            encode(unidentified_access_key, 'hex') AS unidentified_access_key, unrestricted_unidentified_access
       FROM accounts WHERE id = $1::uuid`,
  );
  return {
    account,
    devices: await of(
      `SELECT id, device_id, registration_id, signed_prekey_id, encode(signed_prekey, 'hex') AS signed_prekey,
              encode(signed_prekey_signature, 'hex') AS signed_prekey_signature, kyber_last_resort_id,
              encode(kyber_last_resort_key, 'hex') AS kyber_last_resort_key, created_at
         FROM devices WHERE account_id = $1::uuid ORDER BY device_id`,
    ),
    oneTimePreKeys: await of(
      `SELECT d.device_id, k.key_id, encode(k.public_key, 'hex') AS public_key
         FROM one_time_prekeys k JOIN devices d ON d.id = k.device_row_id WHERE d.account_id = $1::uuid ORDER BY 1, 2`,
    ),
    kyberPreKeys: await of(
      `SELECT d.device_id, k.key_id, encode(k.public_key, 'hex') AS public_key
         FROM kyber_prekeys k JOIN devices d ON d.id = k.device_row_id WHERE d.account_id = $1::uuid ORDER BY 1, 2`,
    ),
    inbox: await of(
      `SELECT m.id, d.device_id, m.sender_account_id, m.sender_username, m.sender_device_id, m.type,
              encode(m.ciphertext, 'hex') AS ciphertext, m.server_timestamp
         FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id WHERE d.account_id = $1::uuid ORDER BY m.seq`,
    ),
    backup: await of(`SELECT encode(blob, 'hex') AS blob, updated_at FROM backups WHERE account_id = $1::uuid`),
    refreshTokens: await of(
      `SELECT device_id, encode(token_hash, 'hex') AS token_hash, credential_version FROM refresh_tokens WHERE account_id = $1::uuid ORDER BY 2`,
    ),
    unlinkedDevices: await of(`SELECT device_id, registration_id FROM unlinked_devices WHERE account_id = $1::uuid ORDER BY 1`),
    provisioningSlots: await of(`SELECT id, encode(message, 'hex') AS message FROM provisioning_slots WHERE account_id = $1::uuid ORDER BY 1`),
  };
}

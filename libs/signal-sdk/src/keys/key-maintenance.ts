import PQueue from 'p-queue';
import { KyberPreKeyRecord, SignedPreKeyRecord } from '@signalapp/libsignal-client';
import type { PreKeyCountResponse, UploadKeysRequest } from '@chat/protocol';
import { MAX_PREKEYS_PER_UPLOAD } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { LocalIdentity, SecureChatStores, SignedKeyIds, SignedKeysState } from '../stores/stores.js';
import { generateOneTimeKeys, generateSignedKeys, signedKeysUpload, uploadHeader, type SignedKeysUpload } from './prekeys.js';

const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * How often the signed EC prekey and the Kyber last-resort prekey are
 * replaced: every 2 days, as Signal's clients do (Signal-Desktop
 * `RotateSignedPreKeyListener`, `ROTATION_INTERVAL = 2 * DAY`; signal-cli
 * `SIGNED_PREKEY_ROTATE_AGE`). A short life limits what a stolen signed
 * prekey can open.
 */
export const DEFAULT_KEY_ROTATION_INTERVAL_MS = 2 * DAY_MS;

/**
 * How long a replaced signed prekey or Kyber last-resort prekey is kept, so
 * that PreKey messages built from a bundle fetched before the rotation still
 * decrypt: 30 days, Signal's archive age (Signal-Android `PreKeyUtil`
 * `ARCHIVE_AGE`, Signal-Desktop `AccountManager` `ARCHIVE_AGE`). Signal counts
 * it from the key's creation; this SDK counts it from the moment the key was
 * replaced at the relay, so a key serves in-flight messages for the whole
 * period after it stopped being handed out.
 */
export const DEFAULT_KEY_GRACE_PERIOD_MS = 30 * DAY_MS;

/** How often a connected client checks whether a rotation or a deletion is due. */
export const DEFAULT_KEY_MAINTENANCE_INTERVAL_MS = 60 * 60 * 1000;

export interface KeyMaintenanceOptions {
  /** One-time keys of a kind a top-up uploads at least (1..`MAX_PREKEYS_PER_UPLOAD`). */
  oneTimePreKeyBatch: number;
  rotationIntervalMs: number;
  gracePeriodMs: number;
  maintenanceIntervalMs: number;
  now: () => number;
}

/** What key maintenance asks of the relay, with the client's tokens. */
export interface KeyRelay {
  uploadKeys(keys: UploadKeysRequest): Promise<void>;
  getPreKeyCount(): Promise<PreKeyCountResponse>;
}

/**
 * The life cycle of this install's prekeys (X3DH section 2.2, PQXDH
 * section 3.3):
 *
 * - one-time EC and Kyber prekeys are topped up when the relay says they run
 *   low (a `keys-low` frame or `refill` in the count);
 * - the signed EC prekey and the Kyber last-resort prekey are replaced every
 *   `rotationIntervalMs`, and a replaced pair is deleted `gracePeriodMs`
 *   after it was replaced;
 * - a used one-time key is deleted by the stores as libsignal consumes it.
 *
 * Which pair the relay holds is kept in the stores (`SignedKeysState`): a
 * new pair becomes active only once the relay confirmed the upload, and a
 * pair whose upload was not confirmed is uploaded again, never dropped, since
 * the relay may have stored it. Every task runs one at a time.
 */
export class KeyMaintenance {
  private readonly queue = new PQueue({ concurrency: 1 });
  /** A top-up queued and not started yet, which a new request joins. */
  private waitingTopUp: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly stores: SecureChatStores,
    private readonly relay: KeyRelay,
    private readonly options: KeyMaintenanceOptions,
    private readonly transaction: <T>(fn: (stores: SecureChatStores) => Promise<T>) => Promise<T>,
  ) {}

  /**
   * A device's first upload (registration, restore): a signed pair and
   * one-time batches of `oneTimePreKeyBatch` each, in one request.
   * `replaceOneTimePreKeys`: the relay drops the device's one-time keys first.
   */
  uploadInitialKeys(options: { replaceOneTimePreKeys?: boolean } = {}): Promise<void> {
    return this.run(async () => {
      const identity = await this.localIdentity();
      const { ids, keys } = await this.signedKeysToUpload(identity);
      const batch = this.options.oneTimePreKeyBatch;
      const oneTime = await this.transaction((stores) =>
        generateOneTimeKeys(stores, identity, { preKeys: batch, kyberPreKeys: batch, now: this.options.now() }),
      );
      await this.relay.uploadKeys({
        ...uploadHeader(identity),
        ...keys,
        ...oneTime,
        ...(options.replaceOneTimePreKeys && { replaceOneTimePreKeys: true }),
      });
      await this.activate(ids);
    });
  }

  /**
   * Asks the relay how many one-time keys it holds and, if it says to
   * refill, uploads enough of each low kind to reach its threshold, at least
   * `oneTimePreKeyBatch`. A call while another waits to run joins it.
   */
  topUp(): Promise<void> {
    if (this.waitingTopUp) return this.waitingTopUp;
    let started = false;
    const done = this.run(async () => {
      // From here on a new keys-low needs a new count: this one may predate it.
      started = true;
      this.waitingTopUp = undefined;
      await this.topUpNow();
    });
    // p-queue starts a task at once when idle; only one still waiting can be joined.
    if (!started) this.waitingTopUp = done;
    return done;
  }

  private async topUpNow(): Promise<void> {
    const count = await this.relay.getPreKeyCount();
    if (!count.refill) return;
    const needed = (held: number) =>
      held < count.threshold ? Math.min(MAX_PREKEYS_PER_UPLOAD, Math.max(this.options.oneTimePreKeyBatch, count.threshold - held)) : 0;
    const batch = { preKeys: needed(count.preKeys), kyberPreKeys: needed(count.kyberPreKeys), now: this.options.now() };
    if (batch.preKeys === 0 && batch.kyberPreKeys === 0) return;
    const identity = await this.localIdentity();
    const oneTime = await this.transaction((stores) => generateOneTimeKeys(stores, identity, batch));
    await this.relay.uploadKeys({ ...uploadHeader(identity), ...oneTime });
  }

  /**
   * Replaces the signed pair if it is due (older than `rotationIntervalMs`,
   * unknown, or a previous upload is unconfirmed), then deletes replaced
   * pairs whose grace period has passed.
   */
  rotateAndPrune(): Promise<void> {
    return this.run(async () => {
      if (await this.rotationDue()) {
        const identity = await this.localIdentity();
        const { ids, keys } = await this.signedKeysToUpload(identity);
        await this.relay.uploadKeys({ ...uploadHeader(identity), ...keys });
        await this.activate(ids);
      }
      await this.pruneReplacedKeys();
    });
  }

  /** Runs `rotateAndPrune` every `maintenanceIntervalMs` until `stop`; failures go to `onError`. */
  start(onError: (error: unknown) => void): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      this.rotateAndPrune().catch(onError);
    }, this.options.maintenanceIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Resolves when no task is queued or running. */
  onIdle(): Promise<void> {
    return this.queue.onIdle();
  }

  private run(task: () => Promise<void>): Promise<void> {
    return this.queue.add(task);
  }

  private async localIdentity(): Promise<LocalIdentity> {
    const identity = await this.stores.identity.getLocalIdentity();
    if (!identity) throw new SecureChatError(SecureChatErrorCode.NoLocalIdentity, 'the stores hold no identity key');
    return identity;
  }

  private async state(stores: SecureChatStores = this.stores): Promise<SignedKeysState> {
    return (await stores.metadata.getSignedKeysState()) ?? { active: null, pending: null };
  }

  private async rotationDue(): Promise<boolean> {
    const { active, pending } = await this.state();
    if (pending || !active) return true;
    const signed = await this.stores.signedPreKey.getSignedPreKey(active.signedPreKeyId).catch(notFoundAsNull);
    const kyber = await this.stores.kyberPreKey.getKyberPreKey(active.kyberLastResortPreKeyId).catch(notFoundAsNull);
    if (!signed || !kyber) return true;
    return this.options.now() - signed.timestamp() >= this.options.rotationIntervalMs;
  }

  /** The pending pair if its keys are still kept, else a new pair recorded as pending. */
  private signedKeysToUpload(identity: LocalIdentity): Promise<{ ids: SignedKeyIds; keys: SignedKeysUpload }> {
    return this.transaction(async (stores) => {
      const state = await this.state(stores);
      if (state.pending) {
        const signed = await stores.signedPreKey.getSignedPreKey(state.pending.signedPreKeyId).catch(notFoundAsNull);
        const kyber = await stores.kyberPreKey.getKyberPreKey(state.pending.kyberLastResortPreKeyId).catch(notFoundAsNull);
        if (signed && kyber) return { ids: state.pending, keys: signedKeysUpload(signed, kyber) };
      }
      const { ids, ...keys } = await generateSignedKeys(stores, identity, this.options.now());
      await stores.metadata.saveSignedKeysState({ active: state.active, pending: ids });
      return { ids, keys };
    });
  }

  /**
   * The relay confirmed `ids`: they become the active pair, their records
   * stamped with this moment (strictly after every other kept key, should
   * the clock have gone back), so that a key's successor's timestamp says
   * when it was replaced.
   */
  private activate(ids: SignedKeyIds): Promise<void> {
    return this.transaction(async (stores) => {
      const signed = await stores.signedPreKey.getSignedPreKey(ids.signedPreKeyId);
      const kyber = await stores.kyberPreKey.getKyberPreKey(ids.kyberLastResortPreKeyId);
      const others = [
        ...(await stores.signedPreKey.getSignedPreKeys()).filter((r) => r.id() !== signed.id()),
        ...(await stores.kyberPreKey.getLastResortKyberPreKeys()).filter((r) => r.id() !== kyber.id()),
      ];
      const latest = Math.max(Number.NEGATIVE_INFINITY, ...others.map((r) => r.timestamp()));
      const activatedAt = Math.max(this.options.now(), latest + 1);
      await stores.signedPreKey.saveSignedPreKey(
        signed.id(),
        SignedPreKeyRecord.new(signed.id(), activatedAt, signed.publicKey(), signed.privateKey(), signed.signature()),
      );
      await stores.kyberPreKey.saveLastResortKyberPreKey(kyber.id(), KyberPreKeyRecord.new(kyber.id(), activatedAt, kyber.keyPair(), kyber.signature()));
      await stores.metadata.saveSignedKeysState({ active: ids, pending: null });
    });
  }

  /**
   * Deletes every signed prekey and Kyber last-resort prekey that is neither
   * active nor pending and was replaced (its next newer key activated) at
   * least `gracePeriodMs` ago.
   */
  private pruneReplacedKeys(): Promise<void> {
    return this.transaction(async (stores) => {
      const { active, pending } = await this.state(stores);
      if (!active) return;
      const now = this.options.now();
      const expired = <R extends { id(): number; timestamp(): number }>(records: R[], activeId: number, pendingId?: number): R[] => {
        // A pending key was never confirmed: its timestamp says when it was made, not when it replaced one.
        const settled = records.filter((r) => r.id() !== pendingId).sort((a, b) => a.timestamp() - b.timestamp());
        return settled.filter((record) => {
          if (record.id() === activeId) return false;
          const successor = settled.find((next) => next.timestamp() > record.timestamp());
          return successor !== undefined && now - successor.timestamp() >= this.options.gracePeriodMs;
        });
      };
      const signed = await stores.signedPreKey.getSignedPreKeys();
      for (const record of expired(signed, active.signedPreKeyId, pending?.signedPreKeyId)) {
        await stores.signedPreKey.removeSignedPreKey(record.id());
      }
      const lastResort = await stores.kyberPreKey.getLastResortKyberPreKeys();
      for (const record of expired(lastResort, active.kyberLastResortPreKeyId, pending?.kyberLastResortPreKeyId)) {
        await stores.kyberPreKey.removeKyberPreKey(record.id());
      }
    });
  }
}

const notFoundAsNull = (error: unknown): null => {
  if (SecureChatError.is(error, SecureChatErrorCode.RecordNotFound)) return null;
  throw error;
};

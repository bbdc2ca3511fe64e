import { setTimeout as sleep } from 'node:timers/promises';
import type { ProvisioningSlotResponse } from '@chat/protocol';
import { ErrorCode } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { RelayTransport } from '../transport/relay-transport.js';

/** How often `beginLinking` asks the relay whether the link was approved, by default. */
export const DEFAULT_LINK_POLL_INTERVAL_MS = 2_000;

export interface AwaitApprovalOptions {
  pollIntervalMs: number;
  signal?: AbortSignal;
  now: () => number;
}

/**
 * Asks the relay for the slot's provisioning message every `pollIntervalMs`
 * until a device of the account approved the link, and returns the sealed
 * bytes. A network failure is retried at the next poll; the slot's end is
 * the relay's `PROVISIONING_NOT_FOUND`, or its `expiresIn` (plus one poll)
 * passing on this clock, whichever comes first.
 * @throws {SecureChatError} `LinkExpired`; `RelayRejected` for any other refusal; `signal.reason` when aborted.
 */
export async function awaitProvisioningMessage(
  transport: Pick<RelayTransport, 'receiveProvisioningMessage'>,
  slot: ProvisioningSlotResponse,
  options: AwaitApprovalOptions,
): Promise<Uint8Array<ArrayBuffer>> {
  const deadline = options.now() + slot.expiresIn * 1000 + options.pollIntervalMs;
  for (;;) {
    options.signal?.throwIfAborted();
    try {
      const answer = await transport.receiveProvisioningMessage(slot.id, slot.secret);
      if (answer) return new Uint8Array(Buffer.from(answer.message, 'base64'));
    } catch (cause) {
      if (SecureChatError.isRelay(cause, ErrorCode.ProvisioningNotFound)) {
        throw new SecureChatError(SecureChatErrorCode.LinkExpired, 'the link slot expired before the link was approved', { cause });
      }
      if (!SecureChatError.is(cause, SecureChatErrorCode.Network)) throw cause;
    }
    if (options.now() >= deadline) throw new SecureChatError(SecureChatErrorCode.LinkExpired, 'the link was not approved before the slot expired');
    await sleep(options.pollIntervalMs, undefined, { signal: options.signal }).catch((error: unknown) => {
      throw options.signal?.aborted ? options.signal.reason : error;
    });
  }
}

import { PublicKey } from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';

/**
 * The link URI a new device shows (as a QR code) to a signed-in device of the
 * account (docs/protocol.md, "Linking a device (client side)"):
 *
 *   securechat://link?id=<slot id>&pub=<base64url of the 33-byte ephemeral public key>
 *
 * The relay never sees it: the ephemeral key is how the new device receives
 * the account's identity key pair without the relay being able to read it.
 */
export interface LinkUri {
  /** The provisioning slot's id, a lower-case UUID as the relay issued it. */
  slotId: string;
  /** The new device's ephemeral public key (libsignal `PublicKey`, type byte 0x05 and 32 bytes). */
  publicKey: PublicKey;
}

export const LINK_URI_PREFIX = 'securechat://link?';

const SLOT_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** 33 bytes are exactly 44 base64url characters, no padding and no spare bits. */
const PUBLIC_KEY_BASE64URL = /^[A-Za-z0-9_-]{44}$/;
const LINK_URI = /^securechat:\/\/link\?id=([^&]*)&pub=([^&]*)$/;

/**
 * @throws {SecureChatError} `InvalidArgument` when `slotId` is not a lower-case UUID.
 */
export function formatLinkUri(link: LinkUri): string {
  if (!SLOT_ID.test(link.slotId)) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'the slot id is not a lower-case UUID');
  return `${LINK_URI_PREFIX}id=${link.slotId}&pub=${Buffer.from(link.publicKey.serialize()).toString('base64url')}`;
}

/**
 * Parses exactly the form `formatLinkUri` writes: scheme, host, `id` then
 * `pub`, nothing else (no other parameters, fragment, percent-encoding,
 * upper-case UUID or padding). The slot id is the associated data of the
 * sealed message, so both devices must read the very same string.
 * @throws {SecureChatError} `InvalidArgument` for anything else, or a `pub` that is not a valid public key.
 */
export function parseLinkUri(uri: string): LinkUri {
  const invalid = (why: string, cause?: unknown) =>
    new SecureChatError(SecureChatErrorCode.InvalidArgument, `not a link URI: ${why}`, cause === undefined ? {} : { cause });
  if (typeof uri !== 'string') throw invalid('not a string');
  const match = LINK_URI.exec(uri);
  if (!match) throw invalid(`expected ${LINK_URI_PREFIX}id=<uuid>&pub=<key>`);
  const [, slotId = '', pub = ''] = match;
  if (!SLOT_ID.test(slotId)) throw invalid('id is not a lower-case UUID');
  if (!PUBLIC_KEY_BASE64URL.test(pub)) throw invalid('pub is not 33 bytes of base64url');
  let publicKey: PublicKey;
  try {
    publicKey = PublicKey.deserialize(new Uint8Array(Buffer.from(pub, 'base64url')));
  } catch (cause) {
    throw invalid('pub is not a public key', cause);
  }
  return { slotId, publicKey };
}

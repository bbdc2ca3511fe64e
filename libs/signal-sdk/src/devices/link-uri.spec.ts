import { describe, expect, it } from '@jest/globals';
import { PrivateKey } from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { formatLinkUri, parseLinkUri } from './link-uri.js';

const SLOT = '3f2b8c1e-5a4d-4e7f-9b0c-1d2e3f4a5b6c';

function refusal(uri: unknown): SecureChatError {
  try {
    parseLinkUri(uri as string);
  } catch (error) {
    expect(error).toBeInstanceOf(SecureChatError);
    return error as SecureChatError;
  }
  throw new Error(`accepted ${String(uri)}`);
}

describe('link URI', () => {
  // A key whose standard base64 differs from its base64url (it has a '+' or '/').
  let publicKey = PrivateKey.generate().getPublicKey();
  while (!/[+/]/.test(Buffer.from(publicKey.serialize()).toString('base64'))) publicKey = PrivateKey.generate().getPublicKey();
  const pub = Buffer.from(publicKey.serialize()).toString('base64url');

  it('round-trips: the slot id and the 33-byte key come back as written', () => {
    const uri = formatLinkUri({ slotId: SLOT, publicKey });
    expect(uri).toBe(`securechat://link?id=${SLOT}&pub=${pub}`);
    const parsed = parseLinkUri(uri);
    expect(parsed.slotId).toBe(SLOT);
    expect(parsed.publicKey.equals(publicKey)).toBe(true);
  });

  it.each([
    ['another scheme', `https://link?id=${SLOT}&pub=${pub}`],
    ['another host', `securechat://linkx?id=${SLOT}&pub=${pub}`],
    ['a path', `securechat://link/?id=${SLOT}&pub=${pub}`],
    ['parameters swapped', `securechat://link?pub=${pub}&id=${SLOT}`],
    ['an extra parameter', `securechat://link?id=${SLOT}&pub=${pub}&x=1`],
    ['a fragment', `securechat://link?id=${SLOT}&pub=${pub}#x`],
    ['an upper-case UUID', `securechat://link?id=${SLOT.toUpperCase()}&pub=${pub}`],
    ['a truncated UUID', `securechat://link?id=${SLOT.slice(1)}&pub=${pub}`],
    ['standard base64', `securechat://link?id=${SLOT}&pub=${Buffer.from(publicKey.serialize()).toString('base64')}`],
    ['a padded key', `securechat://link?id=${SLOT}&pub=${pub}=`],
    ['a 32-byte key', `securechat://link?id=${SLOT}&pub=${Buffer.from(publicKey.serialize().subarray(1)).toString('base64url')}`],
    ['a percent-encoded key', `securechat://link?id=${SLOT}&pub=${pub.slice(0, -1)}%41`],
    ['leading space', ` securechat://link?id=${SLOT}&pub=${pub}`],
    ['an empty string', ''],
  ])('refuses %s with InvalidArgument', (_what, uri) => {
    expect(refusal(uri).code).toBe(SecureChatErrorCode.InvalidArgument);
  });

  it('refuses 33 bytes that are not a public key (wrong type byte)', () => {
    const bytes = Buffer.from(publicKey.serialize());
    bytes[0] = 0x07;
    expect(refusal(`securechat://link?id=${SLOT}&pub=${bytes.toString('base64url')}`).code).toBe(SecureChatErrorCode.InvalidArgument);
  });

  it('refuses a non-string', () => {
    expect(refusal(42).code).toBe(SecureChatErrorCode.InvalidArgument);
  });
});

/**
 * Access tokens as an attacker builds them: every header field and claim is
 * the caller's, signed with node:crypto (HMAC, RSA, RSA-PSS, ECDSA, Ed25519)
 * or not at all. The relay's own tokens are HS256 under its JWT_SECRET with
 * the claims of `AccessTokenClaims` (src/auth/token-verifier.ts); a forged
 * token that changes exactly one thing of such a token shows which check
 * refuses it, as long as `genuineClaims` with `hmacToken(TEST_JWT_SECRET)`
 * is shown to be accepted (the specs' baseline).
 */
import { constants, createHmac, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import type { AuthResponse } from '@chat/protocol';
import { TOKEN_AUDIENCE, TOKEN_ISSUER } from '../../../src/auth/token-verifier.js';
import type { TestRelay } from '../../support/test-relay.js';

export type Claims = Record<string, unknown>;
export type Header = Record<string, unknown>;

export const base64url = (value: object | string | Uint8Array): string =>
  Buffer.from(typeof value === 'string' || value instanceof Uint8Array ? value : JSON.stringify(value)).toString('base64url');

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);

/**
 * The claims the relay would put in a token of `auth`'s device, valid for a
 * minute: `sub`, `dev`, `did` (the device's row, read with SQL), `usr`,
 * `cv`, `iss`, `aud`, `iat`, `exp`.
 */
export async function genuineClaims(relay: Pick<TestRelay, 'sql'>, auth: AuthResponse): Promise<Claims> {
  const [row] = await relay.sql<{ id: string; credential_version: number }>(
    `SELECT d.id, a.credential_version FROM devices d JOIN accounts a ON a.id = d.account_id
      WHERE d.account_id = $1::uuid AND d.device_id = $2`,
    auth.accountId,
    auth.deviceId,
  );
  if (!row) throw new Error(`no device ${auth.deviceId} of ${auth.username}`);
  const iat = nowSeconds();
  return {
    sub: auth.accountId,
    dev: auth.deviceId,
    did: row.id,
    usr: auth.username,
    cv: row.credential_version,
    iss: TOKEN_ISSUER,
    aud: TOKEN_AUDIENCE,
    iat,
    exp: iat + 60,
  };
}

/** `header.payload.` followed by `signature(header.payload)`. */
export function encodeToken(header: Header, claims: Claims, signature: (signingInput: string) => string): string {
  const signingInput = `${base64url(header)}.${base64url(claims)}`;
  return `${signingInput}.${signature(signingInput)}`;
}

export type HmacAlgorithm = 'HS256' | 'HS384' | 'HS512';

/** An HMAC token; `header` adds to (or overrides) `{ alg, typ: 'JWT' }`, so `alg` may even lie about the signature. */
export function hmacToken(secret: string, claims: Claims, algorithm: HmacAlgorithm = 'HS256', header: Header = {}): string {
  const hash = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' }[algorithm];
  return encodeToken({ alg: algorithm, typ: 'JWT', ...header }, claims, (input) =>
    createHmac(hash, secret).update(input).digest('base64url'),
  );
}

export type AsymmetricAlgorithm = 'RS256' | 'PS256' | 'ES256' | 'EdDSA';

export interface KeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
}

const attackerKeys = new Map<AsymmetricAlgorithm, KeyPair>();

/** The attacker's key pair for `algorithm`: generated on first use in the run (RSA generation is slow), never the relay's. */
export function attackerKeyPair(algorithm: AsymmetricAlgorithm): KeyPair {
  let keys = attackerKeys.get(algorithm);
  if (!keys) attackerKeys.set(algorithm, (keys = generateKeyPair(algorithm)));
  return keys;
}

function generateKeyPair(algorithm: AsymmetricAlgorithm): KeyPair {
  switch (algorithm) {
    case 'RS256':
    case 'PS256':
      return generateKeyPairSync('rsa', { modulusLength: 2048 });
    case 'ES256':
      return generateKeyPairSync('ec', { namedCurve: 'P-256' });
    case 'EdDSA':
      return generateKeyPairSync('ed25519');
  }
}

/** A token signed with the private half of `keys` (the attacker's pair by default), the JWS way for each algorithm. */
export function asymmetricToken(
  algorithm: AsymmetricAlgorithm,
  claims: Claims,
  header: Header = {},
  keys = attackerKeyPair(algorithm),
): string {
  return encodeToken({ alg: algorithm, typ: 'JWT', ...header }, claims, (input) => {
    const data = Buffer.from(input);
    switch (algorithm) {
      case 'RS256':
        return sign('sha256', data, keys.privateKey).toString('base64url');
      case 'PS256':
        return sign('sha256', data, { key: keys.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }).toString('base64url');
      case 'ES256':
        return sign('sha256', data, { key: keys.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url');
      case 'EdDSA':
        return sign(null, data, keys.privateKey).toString('base64url');
    }
  });
}

/**
 * An unsigned token (`alg` "none" unless `alg` says otherwise): `header.payload.`
 * with an empty signature part, `header.payload.<signature>` when one is
 * given, `header.payload` (two parts) when `signature` is null.
 */
export function unsignedToken(claims: Claims, signature: string | null = '', alg = 'none'): string {
  const unsigned = `${base64url({ alg, typ: 'JWT' })}.${base64url(claims)}`;
  return signature === null ? unsigned : `${unsigned}.${signature}`;
}

/** The signature part of a token. */
export function signatureOf(token: string): string {
  return token.split('.')[2] ?? '';
}

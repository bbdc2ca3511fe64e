import { scrypt, type ScryptOptions } from 'node:crypto';

/** scrypt's cost (RFC 7914): N = 2^logN, block size r, parallelism p. */
export interface ScryptParams {
  logN: number;
  r: number;
  p: number;
}

/** OWASP's scrypt recommendation (N = 2^17, r = 8, p = 1): 128 MiB and about half a second. */
export const OWASP_SCRYPT: Readonly<ScryptParams> = Object.freeze({ logN: 17, r: 8, p: 1 });

/** Inclusive bounds on each parameter and on the memory they make scrypt use. */
export interface ScryptLimits {
  logN: readonly [number, number];
  r: readonly [number, number];
  p: readonly [number, number];
  maxMemoryBytes: number;
}

const scryptMemory = ({ logN, r }: ScryptParams) => 128 * r * 2 ** logN;

/**
 * True when every parameter is an integer within `limits`: parameters read
 * from a file or a blob must not make the reader allocate without bound.
 */
export function isWithinScryptLimits(params: ScryptParams, limits: ScryptLimits): boolean {
  const within = (value: unknown, [min, max]: readonly [number, number]) =>
    typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max;
  return (
    within(params.logN, limits.logN) &&
    within(params.r, limits.r) &&
    within(params.p, limits.p) &&
    scryptMemory(params) <= limits.maxMemoryBytes
  );
}

/** node:crypto's scrypt, with `maxmem` raised to what the parameters need. */
export function deriveScryptKey(secret: Uint8Array, salt: Uint8Array, params: ScryptParams, length = 32): Promise<Buffer> {
  const options: ScryptOptions = {
    N: 2 ** params.logN,
    r: params.r,
    p: params.p,
    // OpenSSL needs a little more than 128 * N * r.
    maxmem: scryptMemory(params) + 128 * params.r * (params.p + 2) + 1024 * 1024,
  };
  return new Promise((resolve, reject) => {
    scrypt(secret, salt, length, options, (error, key) => (error ? reject(error) : resolve(key)));
  });
}

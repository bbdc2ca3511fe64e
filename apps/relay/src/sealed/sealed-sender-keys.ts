import { PrivateKey, PublicKey, ServerCertificate } from '@signalapp/libsignal-client';

/**
 * The relay's sealed-sender key material (docs/protocol.md, "Sealed sender"),
 * base64: a server key certified by a trust root (libsignal
 * `ServerCertificate`), with which the relay signs sender certificates.
 * Clients are configured with the trust root's public key out of band.
 */
export interface SealedSenderKeys {
  /** libsignal `ServerCertificate.serialize()`. */
  serverCertificate: string;
  /** libsignal `PrivateKey.serialize()` of the certificate's key. */
  serverPrivateKey: string;
}

/** `SealedSenderKeys` and the public half of the trust root that signed them. */
export interface GeneratedSealedSenderKeys extends SealedSenderKeys {
  /** libsignal `PublicKey.serialize()` of the trust root (33 bytes), base64. */
  trustRoot: string;
}

/** A fresh trust root and trust-root private key are returned only by `generateTrustRootAndKeys`. */
export interface GeneratedTrustRoot extends GeneratedSealedSenderKeys {
  /** The trust root's private key: keep it offline; it certifies server keys. */
  trustRootPrivateKey: string;
}

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64');

/**
 * A new trust root and a server key it certifies under `keyId` (libsignal
 * `ServerCertificate.new`), all base64.
 */
export function generateTrustRootAndKeys(keyId = 1): GeneratedTrustRoot {
  const trustRoot = PrivateKey.generate();
  const serverKey = PrivateKey.generate();
  const certificate = ServerCertificate.new(keyId, serverKey.getPublicKey(), trustRoot);
  return {
    trustRoot: b64(trustRoot.getPublicKey().serialize()),
    trustRootPrivateKey: b64(trustRoot.serialize()),
    serverCertificate: b64(certificate.serialize()),
    serverPrivateKey: b64(serverKey.serialize()),
  };
}

/** Parsed `SealedSenderKeys`, ready to sign sender certificates. */
export interface SealedSenderSigner {
  certificate: ServerCertificate;
  privateKey: PrivateKey;
}

/**
 * Parses the keys and checks that the private key is the certificate's.
 * Throws an `Error` whose message names the variable at fault.
 */
export function parseSealedSenderKeys(keys: SealedSenderKeys): SealedSenderSigner {
  let certificate: ServerCertificate;
  try {
    certificate = ServerCertificate.deserialize(strictBase64(keys.serverCertificate));
  } catch {
    throw new Error('SEALED_SENDER_SERVER_CERTIFICATE: must be a base64 libsignal ServerCertificate');
  }
  let privateKey: PrivateKey;
  try {
    privateKey = PrivateKey.deserialize(strictBase64(keys.serverPrivateKey));
  } catch {
    throw new Error('SEALED_SENDER_SERVER_PRIVATE_KEY: must be a base64 libsignal private key');
  }
  if (!privateKey.getPublicKey().equals(certificate.key())) {
    throw new Error("SEALED_SENDER_SERVER_PRIVATE_KEY: is not the private key of SEALED_SENDER_SERVER_CERTIFICATE's server key");
  }
  return { certificate, privateKey };
}

/** Whether `trustRoot` (base64 public key) signed the certificate. */
export function certifiedBy(certificate: ServerCertificate, trustRoot: string): boolean {
  try {
    return PublicKey.deserialize(strictBase64(trustRoot)).verify(certificate.certificateData(), certificate.signature());
  } catch {
    return false;
  }
}

function strictBase64(text: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) throw new Error('not base64');
  return new Uint8Array(Buffer.from(text, 'base64'));
}

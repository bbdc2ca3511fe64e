/**
 * Prints a fresh sealed-sender trust root and a server certificate it signed,
 * for a production relay (docs/protocol.md, "Sealed sender"):
 *
 *   npm run -w apps/relay sealed-sender-keys [-- <key id>]
 *
 * The relay needs SEALED_SENDER_SERVER_CERTIFICATE and
 * SEALED_SENDER_SERVER_PRIVATE_KEY; clients need the trust root's public key.
 * The trust root's private key certifies server keys and is needed again only
 * to certify a new one: keep it offline, never on the relay.
 */
import { generateTrustRootAndKeys } from '../sealed/sealed-sender-keys.js';

const keyIdArgument = process.argv[2];
const keyId = keyIdArgument === undefined ? 1 : Number(keyIdArgument);
if (!Number.isInteger(keyId) || keyId < 0 || keyId > 0xffffffff) {
  process.stderr.write('usage: sealed-sender-keys [key id, an integer 0..4294967295; default 1]\n');
  process.exit(2);
}

const keys = generateTrustRootAndKeys(keyId);
process.stdout.write(
  [
    '# Relay environment (secret: SEALED_SENDER_SERVER_PRIVATE_KEY)',
    `SEALED_SENDER_SERVER_CERTIFICATE=${keys.serverCertificate}`,
    `SEALED_SENDER_SERVER_PRIVATE_KEY=${keys.serverPrivateKey}`,
    '',
    '# Clients: the trust root public key (the SDK option trustRoot)',
    `SEALED_SENDER_TRUST_ROOT=${keys.trustRoot}`,
    '',
    '# Keep offline: the trust root private key, to certify a future server key',
    `SEALED_SENDER_TRUST_ROOT_PRIVATE_KEY=${keys.trustRootPrivateKey}`,
    '',
  ].join('\n'),
);

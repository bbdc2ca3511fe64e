// Sealed sender (docs/protocol.md, "Sealed sender (client side)"): internal
// building blocks of SecureChatClient, shared with the groups code.
export { accessKeyOf, combinedAccessKey, generateProfileKey } from './profile-key.js';
export {
  SENDER_CERTIFICATE_RENEW_MARGIN_MS,
  SenderCertificateCache,
  parseTrustRoot,
  type CertificateHolder,
} from './sender-certificate.js';
export { unseal, type UnsealedMessage } from './unseal.js';
export { sealFor } from './seal.js';
export { AccountIds, normalizeAccountId } from './account-ids.js';
export {
  AccountAddressIdentityKeyStore,
  AccountAddressSessionStore,
  accountAddressStores,
  usernameAddressOf,
  type UsernamesByAccountId,
} from './account-address-stores.js';

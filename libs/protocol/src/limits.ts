/**
 * Sizes and bounds of the wire, shared by the relay (which enforces them) and
 * the SDK (which respects them before sending). Byte counts are of decoded
 * bytes unless the name says otherwise.
 */

/** The wire version; it is also the first segment of every HTTP path (`/v1`). */
export const PROTOCOL_VERSION = 1;
export const API_PREFIX = `/v${PROTOCOL_VERSION}`;
/** Path of the WebSocket endpoint, relative to the relay's base URL. */
export const WS_PATH = `${API_PREFIX}/ws`;

export const USERNAME_MIN_LENGTH = 3;
export const USERNAME_MAX_LENGTH = 32;
/** Usernames are stored and compared in lower case; this is the canonical form. */
export const USERNAME_PATTERN = /^[a-z0-9_.]{3,32}$/;

export const PASSWORD_MIN_LENGTH = 8;
/** Argon2 hashes any length, but an unbounded password is a denial-of-service lever. */
export const PASSWORD_MAX_LENGTH = 256;

/** libsignal device ids are 1..127; the first device of an account is 1. */
export const DEVICE_ID_MIN = 1;
export const DEVICE_ID_MAX = 127;
export const PRIMARY_DEVICE_ID = 1;

/** libsignal registration ids are 14-bit. */
export const REGISTRATION_ID_MIN = 1;
export const REGISTRATION_ID_MAX = 0x3fff;

/** Prekey ids are 24-bit (libsignal's `PreKeyId` fits in a u32; Signal clients use 24 bits). */
export const KEY_ID_MIN = 0;
export const KEY_ID_MAX = 0xffffff;

/** Serialized Curve25519 public key: a type byte (0x05) and 32 bytes. */
export const EC_PUBLIC_KEY_BYTES = 33;
/** Serialized Kyber1024 public key: a type byte (0x08) and 1568 bytes. */
export const KYBER_PUBLIC_KEY_BYTES = 1569;
/** XEdDSA signature. */
export const SIGNATURE_BYTES = 64;

/** One-time EC prekeys and one-time Kyber prekeys accepted in one upload, each. */
export const MAX_PREKEYS_PER_UPLOAD = 100;

/** Largest ciphertext of one device's message. */
export const MAX_CIPHERTEXT_BYTES = 64 * 1024;
/**
 * The most devices an account can ever have, and so the most entries of
 * `messages` (or of `sync`) in one send. The relay's operator sets the actual
 * limit (`MAX_DEVICES_PER_ACCOUNT`, default `DEFAULT_MAX_DEVICES_PER_ACCOUNT`)
 * at or below it.
 */
export const MAX_DEVICES_PER_ACCOUNT = 16;
/** Devices an account may have unless the relay's operator says otherwise (Signal allows 6). */
export const DEFAULT_MAX_DEVICES_PER_ACCOUNT = 6;
/** Largest sealed provisioning message (`PUT /v1/provisioning/:id`), in bytes. */
export const MAX_PROVISIONING_MESSAGE_BYTES = 8 * 1024;
/** Seconds a provisioning slot lives, from its creation to the link. */
export const PROVISIONING_TTL_SECONDS = 600;
/** Message frames the relay sends a connection before it waits for acks, unless its operator says otherwise. */
export const DEFAULT_MAX_INFLIGHT_DELIVERIES = 100;
/** Days an undelivered message is kept, unless the relay's operator says otherwise (Signal keeps 30). */
export const DEFAULT_MESSAGE_RETENTION_DAYS = 30;

/**
 * Largest encrypted backup the relay stores per account. An upload of this
 * size is about 350 KB of JSON (base64), inside `MAX_HTTP_BODY_BYTES`.
 */
export const MAX_BACKUP_BYTES = 256 * 1024;

/** Largest HTTP request body, in bytes of JSON (a full key upload is about 230 KB, a full backup about 350 KB). */
export const MAX_HTTP_BODY_BYTES = 512 * 1024;
/** Largest WebSocket frame the relay reads; larger ones close the socket with 1009. */
export const MAX_WS_FRAME_BYTES = 512 * 1024;

/**
 * Deepest nesting of arrays and objects in a JSON body or frame (the body or
 * frame itself is level 1; the deepest real one, a send frame's device
 * message, is level 4). Deeper is VALIDATION_FAILED: walking it recursively
 * would exhaust the relay's stack long before the size limits bite.
 */
export const MAX_JSON_DEPTH = 32;
/**
 * Most values (objects, arrays, strings, numbers...) in one JSON body or
 * frame; a full key upload holds about 800. More is VALIDATION_FAILED before
 * validation starts: validation costs the relay time and answer bytes per
 * value (a 450 KB body of 150,000 `{}` once took it 22 s and an 88 MB answer).
 */
export const MAX_JSON_VALUES = 2048;

/** Envelopes in one page of `GET /v1/messages`. */
export const MAX_MESSAGES_PER_PAGE = 100;
export const DEFAULT_MESSAGES_PER_PAGE = 100;

/** Client-chosen request ids on WebSocket frames. */
export const REQUEST_ID_MAX_LENGTH = 64;

/**
 * The relay tells a device to upload more one-time prekeys (the `keys-low`
 * frame, and `refill` in `GET /v1/keys`) when it holds fewer than this many
 * one-time EC prekeys or one-time Kyber prekeys.
 */
export const PREKEY_LOW_THRESHOLD = 20;

/**
 * Default limits on bundle fetches (`GET /v1/keys/:username`), so that no one
 * drains another user's one-time prekeys: per pair of requesting account and
 * target account, and per requesting account over all targets. Each is a
 * fixed window; the relay's configuration may change them.
 */
export const BUNDLE_FETCHES_PER_PAIR = 6;
export const BUNDLE_FETCH_PAIR_WINDOW_SECONDS = 3600;
export const BUNDLE_FETCHES_PER_REQUESTER = 100;
export const BUNDLE_FETCH_REQUESTER_WINDOW_SECONDS = 3600;

/** Days a deleted account's username stays unavailable, so that no one else can pose as its owner. */
export const USERNAME_COOLING_OFF_DAYS = 30;

/** An unidentified access key (libsignal zkgroup `ProfileKey.deriveAccessKey()`), bytes. */
export const ACCESS_KEY_BYTES = 16;
/** A profile key (zkgroup `ProfileKey`), bytes; shared only inside end-to-end encrypted messages. */
export const PROFILE_KEY_BYTES = 32;
/** Days a sender certificate is valid unless the relay's operator says otherwise (Signal: 7). */
export const DEFAULT_SENDER_CERTIFICATE_TTL_DAYS = 7;
/** Largest multi-recipient sealed-sender payload (`POST /v1/messages/multi-recipient`), bytes. */
export const MAX_MULTI_RECIPIENT_PAYLOAD_BYTES = 256 * 1024;
/** Header of unauthenticated (sealed) sends: the recipient's access key, or for a multi-recipient send the XOR of every recipient's. */
export const UNIDENTIFIED_ACCESS_KEY_HEADER = 'Unidentified-Access-Key';

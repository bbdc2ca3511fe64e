// Every failure a person can cause, as one sentence they can act on. The
// SDK's and relay's codes follow in brackets so that a bug report names them.
import { SecureChatError, SecureChatErrorCode } from '@chat/signal-sdk';
import { ErrorCode } from '@chat/protocol';

/**
 * A failure already worded for the person at the terminal: `main` prints
 * `chat-cli: <message>` and exits with `exitCode`.
 */
export class CliError extends Error {
  override readonly name = 'CliError';

  constructor(
    message: string,
    readonly exitCode = 1,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** What the sentence may name: the relay, this account, the peer of the failed call. */
export interface ErrorContext {
  relayUrl?: string;
  username?: string;
  peer?: string;
}

export const identityChangedText = (peer: string): string =>
  `${peer}'s safety number changed. Compare it with /safety and /verify, or trust it with /accept.`;

/** One friendly sentence for `error`; never a stack trace, never key material. */
export function describeError(error: unknown, context: ErrorContext = {}): string {
  if (error instanceof CliError) return error.message;
  if (!SecureChatError.is(error)) {
    return error instanceof Error && error.message ? `unexpected failure: ${error.message}` : 'unexpected failure';
  }
  const relay = context.relayUrl ?? 'the configured URL';
  const account = context.username ?? 'this account';
  const peer = context.peer ?? 'that user';
  const tag = error.relayCode ?? error.code;
  const withCode = (text: string) => `${text} [${tag}]`;
  if (error.code === SecureChatErrorCode.RelayRejected || error.code === SecureChatErrorCode.RelayError) {
    return withCode(describeRelayRefusal(error, { relay, account, peer }));
  }
  switch (error.code) {
    case SecureChatErrorCode.Network:
    case SecureChatErrorCode.ConnectionLost:
      return withCode(`cannot reach the relay at ${relay}; is it running?`);
    case SecureChatErrorCode.Timeout:
      return withCode(`the relay at ${relay} did not answer in time; try again`);
    case SecureChatErrorCode.WrongPassphrase:
      return withCode(`wrong passphrase for ${account}`);
    case SecureChatErrorCode.StoreLocked:
      return withCode(`${account} is open in another chat-cli; close that one first`);
    case SecureChatErrorCode.StoreTampered:
      return withCode(`the local store of ${account} is damaged or was altered; it cannot be used`);
    case SecureChatErrorCode.StoreFailure:
      return withCode(`the local store of ${account} could not be read or written`);
    case SecureChatErrorCode.IdentityChanged:
      return withCode(identityChangedText(peer));
    case SecureChatErrorCode.UntrustedIdentity:
      return withCode(`${peer}'s safety number changed; compare it with /safety and /verify, or trust it with /accept`);
    case SecureChatErrorCode.UnknownIdentity:
      return withCode(`no safety number with ${peer} yet: exchange a message first`);
    case SecureChatErrorCode.SafetyNumberMismatch:
      return withCode('the safety number does not match');
    case SecureChatErrorCode.SessionExpired:
      return withCode(`the session of ${account} expired; sign in again with chat-cli login`);
    case SecureChatErrorCode.CredentialsChanged:
      return withCode(`the password of ${account} was changed or the account was deleted; this install is signed out`);
    case SecureChatErrorCode.DeviceUnlinked:
      return withCode(`this device was unlinked from ${account}; link it again with chat-cli link`);
    case SecureChatErrorCode.ConnectionReplaced:
      return withCode(`${account} on this device connected from another chat-cli`);
    case SecureChatErrorCode.LinkExpired:
      return withCode('the link was not approved in time; run chat-cli link again');
    case SecureChatErrorCode.InvalidPreKeyBundle:
      return withCode(`the relay gave invalid keys for ${peer}; nothing was sent`);
    case SecureChatErrorCode.NoLocalIdentity:
      return withCode(`the store of ${account} holds no account; register or link it first`);
    case SecureChatErrorCode.InvalidArgument:
    case SecureChatErrorCode.InvalidOptions:
    case SecureChatErrorCode.InvalidState:
      return withCode(error.message);
    case SecureChatErrorCode.DecryptionFailed:
    case SecureChatErrorCode.SessionRepairFailed:
    case SecureChatErrorCode.MalformedContent:
    case SecureChatErrorCode.InvalidSenderCertificate:
      return withCode(`a message${error.incoming ? ` from ${error.incoming.sender}` : ''} could not be read`);
    default:
      return withCode(error.message);
  }
}

function describeRelayRefusal(error: SecureChatError, names: { relay: string; account: string; peer: string }): string {
  switch (error.relayCode) {
    case ErrorCode.RateLimited:
      return `the relay is busy; try again in ${Math.max(1, Math.ceil(error.retryAfter ?? 1))} s`;
    case ErrorCode.UsernameTaken:
      return `the username ${names.account} is taken; choose another`;
    case ErrorCode.UnknownRecipient:
    case ErrorCode.SealedSenderRefused:
      return `there is no user named ${names.peer}`;
    case ErrorCode.InvalidCredentials:
      return `the relay at ${names.relay} does not know ${names.account} with this install's password`;
    case ErrorCode.InvalidRefreshToken:
    case ErrorCode.TokenExpired:
      return `the session of ${names.account} expired; sign in again with chat-cli login`;
    case ErrorCode.CredentialsChanged:
      return `the password of ${names.account} was changed or the account was deleted; this install is signed out`;
    case ErrorCode.DeviceUnlinked:
      return `this device was unlinked from ${names.account}; link it again with chat-cli link`;
    case ErrorCode.TooManyDevices:
      return `${names.account} has as many devices as the relay allows; unlink one with /unlink`;
    case ErrorCode.ProvisioningNotFound:
      return 'that link is unknown, expired or already used; run chat-cli link again for a new one';
    case ErrorCode.DeviceNotFound:
      return `${names.account} has no such device; /devices lists them`;
    case ErrorCode.PrimaryDevice:
      return 'device 1, the first device, cannot be unlinked';
    case ErrorCode.ValidationFailed:
      return `the relay refused the request: ${error.details?.join('; ') || error.message}`;
    case ErrorCode.Internal:
      return `the relay at ${names.relay} failed; try again later`;
    default:
      return `the relay refused the request: ${error.message}`;
  }
}

import { Transform } from 'class-transformer';
import { IsInt, IsOptional, IsString, Length, Matches, Max, Min, NotContains } from 'class-validator';
import {
  DEVICE_ID_MAX,
  DEVICE_ID_MIN,
  PASSWORD_MAX_LENGTH,
  PASSWORD_MIN_LENGTH,
  USERNAME_MAX_LENGTH,
  USERNAME_PATTERN,
} from './limits.js';

/** Usernames are case-insensitive; the canonical form is lower case. */
export function canonicalUsername(username: string): string {
  return username.toLowerCase();
}

const toCanonicalUsername = ({ value }: { value: unknown }) =>
  typeof value === 'string' ? canonicalUsername(value) : value;

/** `POST /v1/auth/register` */
export class RegisterRequest {
  @Transform(toCanonicalUsername)
  @IsString()
  @Matches(USERNAME_PATTERN, { message: 'username must be 3 to 32 of a-z, 0-9, _ and .' })
  username!: string;

  @IsString()
  @Length(PASSWORD_MIN_LENGTH, PASSWORD_MAX_LENGTH)
  password!: string;
}

/** `POST /v1/auth/login` */
export class LoginRequest {
  @Transform(toCanonicalUsername)
  @IsString()
  @Length(1, USERNAME_MAX_LENGTH)
  // No username has NUL, and Postgres cannot even compare a `text` with one (an error, not a miss).
  @NotContains('\u0000', { message: 'username must not contain NUL' })
  username!: string;

  @IsString()
  @Length(1, PASSWORD_MAX_LENGTH)
  password!: string;

  /** The device to sign in as (default 1); it must be linked to the account. */
  @IsOptional() @IsInt() @Min(DEVICE_ID_MIN) @Max(DEVICE_ID_MAX)
  deviceId?: number;
}

/** `POST /v1/auth/refresh` */
export class RefreshRequest {
  @IsString()
  @Length(1, 128)
  refreshToken!: string;
}

/** Answer to register, login and refresh. */
export interface AuthResponse {
  accountId: string;
  username: string;
  deviceId: number;
  /** JWT (HS256) for `Authorization: Bearer`, valid for `expiresIn` seconds. */
  accessToken: string;
  expiresIn: number;
  /** Opaque, single-use; exchange it at `/v1/auth/refresh` for a new pair. */
  refreshToken: string;
}

/** `POST /v1/auth/password`: every earlier access and refresh token stops working. */
export class ChangePasswordRequest {
  @IsString()
  @Length(1, PASSWORD_MAX_LENGTH)
  currentPassword!: string;

  @IsString()
  @Length(PASSWORD_MIN_LENGTH, PASSWORD_MAX_LENGTH)
  newPassword!: string;
}

/** `DELETE /v1/account`: the password confirms it. */
export class DeleteAccountRequest {
  @IsString()
  @Length(1, PASSWORD_MAX_LENGTH)
  password!: string;
}

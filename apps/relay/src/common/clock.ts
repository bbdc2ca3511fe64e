import { Injectable } from '@nestjs/common';

/**
 * The relay's "now" for rules measured in days (a deleted account's username
 * cooling-off). One injectable so that a test can move time on without waiting.
 */
@Injectable()
export class Clock {
  now(): Date {
    return new Date();
  }
}

import preset from '../../jest.preset.js';

export default {
  ...preset,
  displayName: 'relay',
  rootDir: '.',
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.e2e-spec.ts'],
  // e2e specs boot the relay on a real database (PGlite start-up alone takes seconds).
  testTimeout: 30000,
};

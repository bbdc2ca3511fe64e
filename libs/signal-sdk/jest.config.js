import preset from '../../jest.preset.js';

export default { ...preset, displayName: 'signal-sdk', rootDir: '.', testMatch: ['<rootDir>/src/**/*.spec.ts'] };

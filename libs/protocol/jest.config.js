import preset from '../../jest.preset.js';

export default { ...preset, displayName: 'protocol', rootDir: '.', testMatch: ['<rootDir>/src/**/*.spec.ts'] };

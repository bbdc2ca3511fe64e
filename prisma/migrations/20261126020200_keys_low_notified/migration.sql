-- AlterTable
ALTER TABLE "devices" ADD COLUMN     "keys_low_notified_at" TIMESTAMPTZ(3);

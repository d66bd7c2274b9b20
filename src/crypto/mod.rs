//! Key hierarchy, key slots, volume header, and chunk/record sealing (to be written).

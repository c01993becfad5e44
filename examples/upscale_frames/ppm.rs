//! Binary PPM (P6, 8-bit) reading and writing, enough for image-sequence debugging.

use std::path::Path;

use gstflashvsr::engine::RgbFrame;

/// Reads a P6 file with maxval 255; comments (`#` to end of line) are allowed in
/// the header.
pub fn read_ppm(path: &Path) -> Result<RgbFrame, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_ppm(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_ppm(bytes: &[u8]) -> Result<RgbFrame, String> {
    let mut pos = 0;
    let mut fields = Vec::with_capacity(4);
    while fields.len() < 4 {
        // skip whitespace and comments
        while pos < bytes.len() && (bytes[pos].is_ascii_whitespace() || bytes[pos] == b'#') {
            if bytes[pos] == b'#' {
                while pos < bytes.len() && bytes[pos] != b'\n' {
                    pos += 1;
                }
            } else {
                pos += 1;
            }
        }
        let start = pos;
        while pos < bytes.len() && !bytes[pos].is_ascii_whitespace() && bytes[pos] != b'#' {
            pos += 1;
        }
        if start == pos {
            return Err("truncated PPM header".into());
        }
        fields.push(String::from_utf8_lossy(&bytes[start..pos]).into_owned());
    }
    if fields[0] != "P6" {
        return Err(format!(
            "not a binary PPM (magic {:?}, expected \"P6\")",
            fields[0]
        ));
    }
    let number = |i: usize, what: &str| -> Result<u32, String> {
        fields[i]
            .parse()
            .map_err(|_| format!("bad {what} {:?} in the PPM header", fields[i]))
    };
    let (width, height, maxval) = (
        number(1, "width")?,
        number(2, "height")?,
        number(3, "maxval")?,
    );
    if maxval != 255 {
        return Err(format!(
            "maxval {maxval} is not supported (only 8-bit, 255)"
        ));
    }
    // exactly one whitespace byte separates the header from the pixels
    let data_start = pos + 1;
    let len = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| format!("{width}x{height} is too large"))?;
    let data = bytes
        .get(data_start..data_start.saturating_add(len))
        .ok_or_else(|| format!("{width}x{height} needs {len} pixel bytes, the file is shorter"))?;
    Ok(RgbFrame {
        width,
        height,
        data: data.to_vec(),
    })
}

pub fn write_ppm(path: &Path, frame: &RgbFrame) -> Result<(), String> {
    let mut bytes = format!("P6\n{} {}\n255\n", frame.width, frame.height).into_bytes();
    bytes.extend_from_slice(&frame.data);
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

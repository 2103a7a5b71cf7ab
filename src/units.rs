//! Numbers for people: bytes, durations, counts. Pure; every report, log
//! line and progress bar formats through these.

use std::time::Duration;

/// Whole milliseconds (saturating): what logs and reports count in.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds to a tenth: what a cutover attempt reports its lock wait and
/// hold in.
pub fn millis_tenths(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if v < 10.0 {
        format!("{v:.2} {unit}")
    } else if v < 100.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

/// An integer with thousands separators: `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration for people: `250ms`, `12.3s`, `3m05s`, `2h03m`, `1d02h`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.subsec_millis());
    }
    if secs < 60 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    if secs < 3600 {
        return format!("{}m{:02}s", secs / 60, secs % 60);
    }
    if secs < 86_400 {
        return format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60);
    }
    format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3600)
}

/// A count with a metric suffix: `950`, `12.3k`, `4.56M`, `1.20G`.
pub fn format_count(n: f64) -> String {
    if !n.is_finite() {
        return "?".into();
    }
    let a = n.abs();
    let (v, suffix) = if a < 1e3 {
        return format!("{n:.0}");
    } else if a < 1e6 {
        (n / 1e3, "k")
    } else if a < 1e9 {
        (n / 1e6, "M")
    } else {
        (n / 1e9, "G")
    };
    if v.abs() < 10.0 {
        format!("{v:.2}{suffix}")
    } else if v.abs() < 100.0 {
        format!("{v:.1}{suffix}")
    } else {
        format!("{v:.0}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds() {
        assert_eq!(millis(Duration::from_micros(1_999)), 1);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis_tenths(Duration::from_micros(1_234)), 1.2);
        assert_eq!(millis_tenths(Duration::from_micros(1_250)), 1.3);
    }

    #[test]
    fn human_formats() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.00 KiB");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_bytes(50 * 1024 * 1024 + 1024 * 512), "50.5 MiB");
        assert_eq!(format_bytes(300 * 1024 * 1024 * 1024), "300 GiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(format_duration(Duration::from_secs(7380)), "2h03m");
        assert_eq!(format_duration(Duration::from_secs(93_600)), "1d02h");
        assert_eq!(format_count(950.0), "950");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(2_999_974), "2,999,974");
        assert_eq!(format_count(12_345.0), "12.3k");
        assert_eq!(format_count(4_560_000.0), "4.56M");
        assert_eq!(format_count(1_200_000_000.0), "1.20G");
        assert_eq!(format_count(f64::INFINITY), "?");
    }
}

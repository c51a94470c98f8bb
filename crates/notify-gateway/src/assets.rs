//! Static assets compiled into the binary: the demo page and the browser client module with its
//! TypeScript declarations, so a fresh machine needs nothing but the binary to show
//! notifications in a browser.

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// URL path it is served at.
    pub path: &'static str,
    /// `Content-Type` header.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static str,
}

/// The demo page, served at `GET /` when the request is not a WebSocket upgrade.
pub const INDEX: Asset = Asset {
    path: "/",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../assets/index.html"),
};

/// Every other asset, served at its path.
pub const FILES: &[Asset] = &[
    Asset {
        path: "/client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/client.js"),
    },
    Asset {
        path: "/client.d.ts",
        content_type: "application/typescript; charset=utf-8",
        body: include_str!("../assets/client.d.ts"),
    },
    Asset {
        path: "/demo.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/demo.js"),
    },
];

/// The ops page, served at `GET /ops` to those allowed to see it ([`crate::ops`]).
pub const OPS_PAGE: Asset = Asset {
    path: "/ops",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../assets/ops.html"),
};

/// The ops page's script and stylesheet (no numbers in them: served to anyone).
pub const OPS_FILES: &[Asset] = &[
    Asset {
        path: "/ops/ops.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/ops.js"),
    },
    Asset {
        path: "/ops/ops.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/ops.css"),
    },
];

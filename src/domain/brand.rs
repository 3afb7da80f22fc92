//! How the customer portal presents itself: a product name, an accent colour and a logo,
//! set for every application (`HERALD_PORTAL_*`) or for one (`portal_brand` on the
//! application). Each part is checked where it enters, so a page can put it in HTML, in a
//! style sheet and in an `<img src>` as it is.

use serde::{Deserialize, Serialize};

/// A brand's parts; any may be missing (the next level's, or Herald's own, is used).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Brand {
    /// The product name the portal's title and heading show.
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub product_name: Option<String>,
    /// `#rgb` or `#rrggbb`.
    #[schema(pattern = "^#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")]
    pub accent_color: Option<String>,
    /// An `https://` image URL, at most 2,048 bytes.
    #[schema(
        max_length = 2048,
        pattern = "^https://[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*(:[0-9]{1,5})?(/[A-Za-z0-9._~!$&()*+,;=:@%/-]*)?$"
    )]
    pub logo_url: Option<String>,
}

impl Brand {
    /// The brand as given, or what is wrong with it.
    pub fn checked(self) -> Result<Brand, String> {
        if let Some(name) = &self.product_name
            && (name.trim().is_empty() || name.chars().count() > 100)
        {
            return Err("portal_brand.product_name must be 1 to 100 characters".into());
        }
        if let Some(color) = &self.accent_color {
            let hex = color.strip_prefix('#').unwrap_or("");
            if !matches!(hex.len(), 3 | 6) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!(
                    "portal_brand.accent_color {color:?} is not #rgb or #rrggbb"
                ));
            }
        }
        if let Some(logo) = &self.logo_url {
            let ok = logo.len() <= 2048
                && url::Url::parse(logo).is_ok_and(|u| u.scheme() == "https" && u.host().is_some())
                && !logo.contains(['"', '\'', '<', '>', ' ', '\\']);
            if !ok {
                return Err(
                    "portal_brand.logo_url must be an https:// URL of at most 2048 bytes".into(),
                );
            }
        }
        Ok(self)
    }

    /// This brand's parts, the missing ones taken from `fallback`.
    pub fn or(&self, fallback: &Brand) -> Brand {
        Brand {
            product_name: self
                .product_name
                .clone()
                .or_else(|| fallback.product_name.clone()),
            accent_color: self
                .accent_color
                .clone()
                .or_else(|| fallback.accent_color.clone()),
            logo_url: self.logo_url.clone().or_else(|| fallback.logo_url.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Brand;

    #[test]
    fn only_what_a_page_can_use_as_it_is_passes() {
        let ok = Brand {
            product_name: Some("Acme <Billing>".into()),
            accent_color: Some("#0a7".into()),
            logo_url: Some("https://cdn.example.com/logo.svg".into()),
        };
        assert_eq!(ok.clone().checked(), Ok(ok));
        for bad in [
            Brand {
                accent_color: Some("red".into()),
                ..Brand::default()
            },
            Brand {
                accent_color: Some("#12345g".into()),
                ..Brand::default()
            },
            Brand {
                accent_color: Some("#fff;}body{".into()),
                ..Brand::default()
            },
            Brand {
                logo_url: Some("javascript:alert(1)".into()),
                ..Brand::default()
            },
            Brand {
                logo_url: Some("http://example.com/a.png".into()),
                ..Brand::default()
            },
            Brand {
                logo_url: Some("https://e.com/a\".png".into()),
                ..Brand::default()
            },
            Brand {
                product_name: Some(" ".into()),
                ..Brand::default()
            },
        ] {
            assert!(bad.clone().checked().is_err(), "{bad:?}");
        }
    }
}

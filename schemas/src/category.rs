//! Spend categories and the ISO 18245 merchant category code ranges that map
//! to them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The spend category reports group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Airlines,
    Lodging,
    CarRental,
    Transport,
    Restaurants,
    Grocery,
    Fuel,
    Software,
    Telecom,
    Utilities,
    OfficeSupplies,
    ProfessionalServices,
    Healthcare,
    Education,
    Entertainment,
    Government,
    Financial,
    Retail,
    Other,
}

impl Category {
    pub const ALL: [Category; 19] = [
        Category::Airlines,
        Category::Lodging,
        Category::CarRental,
        Category::Transport,
        Category::Restaurants,
        Category::Grocery,
        Category::Fuel,
        Category::Software,
        Category::Telecom,
        Category::Utilities,
        Category::OfficeSupplies,
        Category::ProfessionalServices,
        Category::Healthcare,
        Category::Education,
        Category::Entertainment,
        Category::Government,
        Category::Financial,
        Category::Retail,
        Category::Other,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Category::Airlines => "airlines",
            Category::Lodging => "lodging",
            Category::CarRental => "car_rental",
            Category::Transport => "transport",
            Category::Restaurants => "restaurants",
            Category::Grocery => "grocery",
            Category::Fuel => "fuel",
            Category::Software => "software",
            Category::Telecom => "telecom",
            Category::Utilities => "utilities",
            Category::OfficeSupplies => "office_supplies",
            Category::ProfessionalServices => "professional_services",
            Category::Healthcare => "healthcare",
            Category::Education => "education",
            Category::Entertainment => "entertainment",
            Category::Government => "government",
            Category::Financial => "financial",
            Category::Retail => "retail",
            Category::Other => "other",
        }
    }

    /// The category of an ISO 18245 merchant category code.
    pub fn from_mcc(mcc: u16) -> Category {
        match mcc {
            3000..=3350 | 4511 => Category::Airlines,
            3351..=3500 | 7512 | 7513 | 7519 => Category::CarRental,
            3501..=3999 | 7011 | 7012 => Category::Lodging,
            4011 | 4111 | 4112 | 4119 | 4121 | 4131 | 4411 | 4457 | 4468 | 4582 | 4722 | 4784
            | 4789 | 7523 => Category::Transport,
            5811..=5814 => Category::Restaurants,
            5411 | 5422 | 5441 | 5451 | 5462 | 5499 => Category::Grocery,
            5541 | 5542 | 5552 | 5983 => Category::Fuel,
            4816 | 5734 | 5817 | 5818 | 7372 | 7374 | 7379 => Category::Software,
            4812 | 4814 | 4821 | 4899 => Category::Telecom,
            4900 => Category::Utilities,
            5044 | 5111 | 5943 | 5978 => Category::OfficeSupplies,
            7311 | 7333 | 7338 | 7339 | 7361 | 7392 | 7399 | 8111 | 8911 | 8931 | 8999 => {
                Category::ProfessionalServices
            }
            5912 | 8011..=8099 => Category::Healthcare,
            8211..=8299 => Category::Education,
            7832 | 7841 | 7911..=7999 => Category::Entertainment,
            9211..=9405 => Category::Government,
            6010..=6012 | 6050 | 6051 | 6211 | 6300 | 6540 => Category::Financial,
            5000..=5999 => Category::Retail,
            _ => Category::Other,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(Category::from_mcc(3000), Category::Airlines);
        assert_eq!(Category::from_mcc(4511), Category::Airlines);
        assert_eq!(Category::from_mcc(3400), Category::CarRental);
        assert_eq!(Category::from_mcc(7512), Category::CarRental);
        assert_eq!(Category::from_mcc(3700), Category::Lodging);
        assert_eq!(Category::from_mcc(7011), Category::Lodging);
        assert_eq!(Category::from_mcc(5812), Category::Restaurants);
        assert_eq!(Category::from_mcc(5411), Category::Grocery);
        assert_eq!(Category::from_mcc(5542), Category::Fuel);
        assert_eq!(Category::from_mcc(5734), Category::Software);
        assert_eq!(Category::from_mcc(4121), Category::Transport);
        assert_eq!(Category::from_mcc(5999), Category::Retail);
        assert_eq!(Category::from_mcc(1), Category::Other);
    }

    #[test]
    fn names_round_trip() {
        for c in Category::ALL {
            assert_eq!(c.as_str().parse::<Category>(), Ok(c));
        }
        assert!("food".parse::<Category>().is_err());
    }
}

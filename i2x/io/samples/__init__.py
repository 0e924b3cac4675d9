"""What belongs to the analysed samples beyond their labels: a fingerprint of their pixels
(:mod:`~i2x.io.samples.fingerprint`), so runs compared together are known to hold the same images, and the
regions of interest a user gives per sample (:mod:`~i2x.io.samples.roi`)."""

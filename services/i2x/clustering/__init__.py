"""ClusteringService: prototypes (PCA + KMeans, Eq. 3) and HDBSCAN of confidence changes (Eq. 5)."""

from i2x.clustering.service import ClusteringServicer

__all__ = ["ClusteringServicer"]
